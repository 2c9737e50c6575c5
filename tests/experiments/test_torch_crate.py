"""The PyTorch CRATE baseline of experiments/crate/benchmark.py against the official outputs (golden file)."""
import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the PyTorch baseline needs the `bench` extra")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "experiments", "crate"))
import torch_crate  # noqa: E402


@pytest.mark.parametrize("ista", torch_crate.ISTA_FORMS)
def test_matches_official_logits(golden, ista):
  arrays, meta = golden("crate_small")
  ctor = meta["ctor"]
  model = torch_crate.CRATE(ctor["image_size"], ctor["patch_size"], ctor["num_classes"], ctor["dim"], ctor["depth"],
                            ctor["heads"], ctor["dim_head"], ctor["channels"], ista=ista)
  state = {k[len("param/"):]: torch.from_numpy(arrays[k]) for k in arrays if k.startswith("param/")}
  model.load_state_dict(state, strict=True)
  with torch.no_grad():
    logits = model.eval()(torch.from_numpy(arrays["input/img"])).numpy()
  np.testing.assert_allclose(logits, arrays["output/logits"], atol=2e-5, rtol=1e-5)
