"""The PyTorch CRATE baseline of experiments/crate/benchmark.py against the official outputs (golden file)."""
import json
import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the PyTorch baseline needs the `bench` extra")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "experiments", "crate"))
import torch_crate  # noqa: E402

GOLDEN = os.path.join(os.path.dirname(__file__), "..", "data", "crate_small.npz")


@pytest.mark.parametrize("ista", torch_crate.ISTA_FORMS)
def test_matches_official_logits(ista):
  golden = np.load(GOLDEN)
  ctor = json.loads(str(golden["meta"]))["ctor"]
  model = torch_crate.CRATE(ctor["image_size"], ctor["patch_size"], ctor["num_classes"], ctor["dim"], ctor["depth"],
                            ctor["heads"], ctor["dim_head"], ctor["channels"], ista=ista)
  state = {k[len("param/"):]: torch.from_numpy(golden[k]) for k in golden.files if k.startswith("param/")}
  model.load_state_dict(state, strict=True)
  with torch.no_grad():
    logits = model.eval()(torch.from_numpy(golden["input/img"])).numpy()
  np.testing.assert_allclose(logits, golden["output/logits"], atol=2e-5, rtol=1e-5)
