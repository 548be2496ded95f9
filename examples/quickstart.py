"""Load the embedded model, identify a surrogate, plan a schedule and steer."""

import torch

import steercontrol as sc
from steercontrol.concepts import concept_directions, load_task, projection_readout
from steercontrol.controller import Controller
from steercontrol.hooks import inject
from steercontrol.identify import identify

model = sc.load_model("smollm2-135m")
directions = concept_directions(model, load_task("sentiment"))
readout = projection_readout(directions)

prompt = "The service at this hotel was"
ids = model.tokenize(prompt)["input_ids"][0]
surrogate = identify(model, ids, directions.directions, readout, order=32).surrogate
print("predicted gain per layer:", surrogate.gain_profile().round(3))

# Half the distance between the class means on this readout.
schedule = Controller(surrogate).min_energy(0.5 * directions.metadata["final_gap"], layers=range(8, model.n_layers))
vectors = torch.tensor(schedule.vectors(surrogate.input_directions), dtype=model.dtype)
print(f"planned energy {schedule.energy:.3f}, largest layer {int(abs(schedule.amplitude_profile()).argmax())}")

batch = model.tokenize(prompt)
with torch.no_grad():
    plain = model.model.generate(**batch, max_new_tokens=20, do_sample=False)
    # The hooks are active from inject() until the block exits.
    with inject(model, vectors):
        steered = model.model.generate(**batch, max_new_tokens=20, do_sample=False)
print("unsteered:", repr(model.tokenizer.decode(plain[0], skip_special_tokens=True)))
print("steered:  ", repr(model.tokenizer.decode(steered[0], skip_special_tokens=True)))
