"""pipeline("code-infilling") and pipeline("text-generation") on tiny converted checkpoints, against Meta's prompt
constructions (tests/fixtures_tokenizer.MetaReference on SentencePiece itself)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList, TextIteratorStreamer, pipeline

from codellama_hf import CodeInfillingPipeline, CodeLlamaTokenizer
from codellama_hf.errors import UserInputError
from tests.fixtures_tokenizer import MetaReference

CODE = 'def remove_non_ascii(s: str) -> str:\n    """ <FILL_ME>\n    return result\n'
PREFIX, SUFFIX = CODE.split("<FILL_ME>")


class Force(LogitsProcessor):
    """Makes the model generate `ids` in order (a random model never picks a stop id by itself)."""

    def __init__(self, ids: list[int], prompt_length: int):
        self.ids, self.prompt_length = ids, prompt_length

    def __call__(self, input_ids, scores):
        step = input_ids.shape[1] - self.prompt_length
        if step < len(self.ids):
            scores = torch.full_like(scores, -float("inf"))
            scores[:, self.ids[step]] = 0.0
        return scores


class GenerateSpy:
    """Records every generate call's input ids and output, on a pipeline's model."""

    def __init__(self, pipe, monkeypatch):
        self.calls = []
        real = pipe.model.generate

        def generate(*args, **kwargs):
            out = real(*args, **kwargs)
            self.calls.append({"input_ids": kwargs["input_ids"].tolist(), "output": out.tolist(), "kwargs": kwargs})
            return out

        monkeypatch.setattr(pipe.model, "generate", generate)


@pytest.fixture(scope="module")
def infill(converted_checkpoint):
    return pipeline("code-infilling", model=str(converted_checkpoint("CodeLlama-7b")))


@pytest.fixture(scope="module")
def meta(converted_checkpoint):
    return MetaReference(converted_checkpoint("CodeLlama-7b") / "tokenizer.model")


def test_the_task_builds_the_package_pipeline_with_its_tokenizer(infill):
    assert type(infill) is CodeInfillingPipeline and type(infill.tokenizer) is CodeLlamaTokenizer


@pytest.mark.parametrize("suffix_first", [False, True])
def test_prompt_ids_are_metas(infill, meta, monkeypatch, suffix_first):
    spy = GenerateSpy(infill, monkeypatch)
    infill(CODE, suffix_first=suffix_first, max_new_tokens=2)
    infill({"prefix": " x", "suffix": " y\n"}, suffix_first=suffix_first, max_new_tokens=2)
    assert spy.calls[0]["input_ids"] == [meta.infilling_prompt(PREFIX, SUFFIX, suffix_first=suffix_first)]
    assert spy.calls[1]["input_ids"] == [meta.infilling_prompt(" x", " y\n", suffix_first=suffix_first)]


def test_defaults_are_metas_greedy_128_tokens(infill, monkeypatch):
    spy = GenerateSpy(infill, monkeypatch)
    infill(CODE)
    kwargs = spy.calls[0]["kwargs"]
    assert kwargs["max_new_tokens"] == 128 and kwargs["do_sample"] is False
    assert infill(CODE) == infill(CODE)  # greedy: the same middle twice


def test_output_is_the_middle_decoded_as_meta_and_the_completed_code(infill, meta, monkeypatch):
    spy = GenerateSpy(infill, monkeypatch)
    out = infill(CODE, max_new_tokens=12)
    new = spy.calls[0]["output"][0][len(spy.calls[0]["input_ids"][0]):]
    assert set(out) == {"infill", "generated_text"}
    assert out["infill"] == meta.decode_infilling([i for i in new if i not in (meta.eot_id, meta.eos_id)])
    assert out["generated_text"] == PREFIX + out["infill"] + SUFFIX
    assert infill(CODE, max_new_tokens=12, return_full_text=False) == {"infill": out["infill"],
                                                                       "generated_text": out["infill"]}


def test_a_leading_space_in_the_middle_is_kept(infill, meta):
    middle = " result = s.encode('ascii')"
    forced = meta.encode_infilling(middle)
    assert meta.sp.id_to_piece(forced[0]).startswith("▁")  # the piece SentencePiece's decode would strip
    prompt = len(meta.infilling_prompt(PREFIX, SUFFIX))
    out = infill(CODE, logits_processor=LogitsProcessorList([Force(forced + [meta.eot_id], prompt)]))
    assert out["infill"] == middle and out["generated_text"] == PREFIX + middle + SUFFIX


@pytest.mark.parametrize("stop", ["eot", "eos"])
def test_generation_stops_at_eot_or_eos_and_neither_is_in_the_text(infill, meta, monkeypatch, stop):
    spy = GenerateSpy(infill, monkeypatch)
    stop_id = {"eot": meta.eot_id, "eos": meta.eos_id}[stop]
    forced = meta.encode_infilling("x = 1") + [stop_id]
    prompt = len(meta.infilling_prompt(PREFIX, SUFFIX))
    out = infill(CODE, max_new_tokens=40, logits_processor=LogitsProcessorList([Force(forced, prompt)]))
    assert spy.calls[0]["output"][0][prompt:] == forced  # nothing generated after the stop id
    assert out["infill"] == "x = 1"


def test_a_list_runs_in_batches_with_the_results_of_one_at_a_time(infill, monkeypatch):
    inputs = [CODE, {"prefix": "def add(a, b):\n    ", "suffix": "\n"}, "x = <FILL_ME>", "for i in <FILL_ME>:\n"]
    one_by_one = [infill(x, max_new_tokens=10) for x in inputs]
    spy = GenerateSpy(infill, monkeypatch)
    batched = infill(inputs, max_new_tokens=10, batch_size=3)
    assert batched == one_by_one
    assert len(spy.calls) == 2  # one generate call per batch: 3 inputs, then 1
    first = spy.calls[0]["input_ids"]
    assert len({len(row) for row in first}) == 1 and first[2][0] == infill.tokenizer.pad_token_id  # left padding
    assert infill(inputs, max_new_tokens=10) == one_by_one and len(spy.calls) == 3  # default: all 4 in one batch


def test_streaming_yields_the_middle(infill, meta):
    middle = " if not s:\n        return s"
    prompt = len(meta.infilling_prompt(PREFIX, SUFFIX))
    streamer = TextIteratorStreamer(infill.tokenizer)
    result = {}
    force = LogitsProcessorList([Force(meta.encode_infilling(middle) + [meta.eot_id], prompt)])
    worker = threading.Thread(target=lambda: result.update(infill(CODE, streamer=streamer, logits_processor=force)))
    worker.start()
    pieces = list(streamer)
    worker.join(timeout=60)
    assert len(pieces) > 1 and "".join(pieces) == middle == result["infill"]


@pytest.mark.parametrize("text, count", [("def f(x):\n    return x\n", "no"), ("<FILL_ME> and <FILL_ME>", "2")])
def test_a_string_needs_exactly_one_marker(infill, text, count):
    with pytest.raises(ValueError, match=rf"holds {count} fill markers? '<FILL_ME>'; put exactly one"):
        infill(text)


def test_a_dict_needs_prefix_and_suffix(infill):
    with pytest.raises(ValueError, match=r"exactly the string keys 'prefix' and 'suffix', got keys \['prefix'\]"):
        infill({"prefix": "x"})


@pytest.mark.parametrize("variant", ["CodeLlama-7b-Python", "CodeLlama-34b-Instruct"])
def test_variants_without_infilling_tokens_are_refused_by_name(converted_checkpoint, variant):
    with pytest.raises(ValueError) as err:
        pipeline("code-infilling", model=str(converted_checkpoint(variant)))
    assert isinstance(err.value, UserInputError)  # ours, not an index error from inside the model
    assert str(err.value).startswith(f"{variant} has no infilling tokens")
    assert "CodeLlama-7b, CodeLlama-7b-Instruct, CodeLlama-13b, CodeLlama-13b-Instruct, CodeLlama-70b" in str(err.value)


@pytest.mark.parametrize("variant", ["CodeLlama-70b-Python", "CodeLlama-70b-Instruct"])
def test_variants_not_trained_for_infilling_warn_and_still_infill(converted_checkpoint, variant):
    with pytest.warns(UserWarning, match=f"{variant} has infilling tokens but was not trained for infilling"):
        pipe = pipeline("code-infilling", model=str(converted_checkpoint(variant)))
    out = pipe(CODE, max_new_tokens=3)
    assert out["generated_text"] == PREFIX + out["infill"] + SUFFIX


def test_a_prompt_over_the_limit_is_trimmed_around_the_gap(infill, meta, monkeypatch, caplog):
    prefix, suffix = "".join(f"a{i} = {i}\n" for i in range(60)), "".join(f"b{i} = {i}\n" for i in range(60))
    full_prefix, full_suffix = meta.encode(prefix), meta.encode_infilling(suffix)
    spy = GenerateSpy(infill, monkeypatch)
    with caplog.at_level(logging.WARNING, logger="codellama_hf"):
        out = infill({"prefix": prefix, "suffix": suffix}, max_prompt_tokens=100, max_new_tokens=2)
    ids = spy.calls[0]["input_ids"][0]
    assert len(ids) == 100 and ids[:2] == [meta.bos_id, meta.prefix_id] and ids[-1] == meta.middle_id
    kept_prefix, kept_suffix = ids[2:ids.index(meta.suffix_id)], ids[ids.index(meta.suffix_id) + 1:-1]
    assert kept_prefix == full_prefix[-len(kept_prefix):] and kept_suffix == full_suffix[:len(kept_suffix)]
    assert len(kept_suffix) == 96 // 4  # the suffix keeps a quarter of the room
    assert "dropped" in caplog.text
    assert out["generated_text"] == prefix + out["infill"] + suffix  # the caller's whole code comes back
    with pytest.raises(ValueError, match="pass a larger limit"):
        infill(CODE, max_prompt_tokens=4)


def test_the_pipeline_takes_device_map_dtype_and_a_quantization_config(converted_checkpoint):
    from transformers import BitsAndBytesConfig

    pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed (pip install '.[bitsandbytes]')")
    folder = str(converted_checkpoint("CodeLlama-7b"))
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    pipe = pipeline("code-infilling", model=folder, dtype=torch.bfloat16, device_map="cpu",
                    model_kwargs={"quantization_config": quant})
    assert type(pipe.model.model.layers[0].mlp.down_proj).__name__ == "Linear4bit"
    out = pipe(CODE, max_new_tokens=4)
    assert out["generated_text"] == PREFIX + out["infill"] + SUFFIX


def test_a_stock_llama_model_from_a_llama_format_folder_infills(make_meta_checkpoint, tiny_vocabs, tmp_path):
    from transformers import LlamaForCausalLM

    from codellama_hf import convert_meta_checkpoint
    from tests.fixtures_tokenizer import TINY_SPM_VOCAB

    src = make_meta_checkpoint("CodeLlama-13b", n_layers=1, vocab=TINY_SPM_VOCAB,
                               tokenizer_model=tiny_vocabs["fim"] / "tokenizer.model")
    folder = convert_meta_checkpoint(src, tmp_path / "CodeLlama-13b", format="llama", dtype="float32", quiet=True)
    model = LlamaForCausalLM.from_pretrained(folder)
    pipe = pipeline("code-infilling", model=model, tokenizer=CodeLlamaTokenizer.from_pretrained(folder))
    meta = MetaReference(folder / "tokenizer.model")
    prompt = len(meta.infilling_prompt(PREFIX, SUFFIX))
    forced = meta.encode_infilling(" pass") + [meta.eot_id]
    out = pipe(CODE, logits_processor=LogitsProcessorList([Force(forced, prompt)]))
    assert out["infill"] == " pass"


# ----- pipeline("text-generation") ------------------------------------------------------------------------------

def test_text_generation_completes_a_string(converted_checkpoint, monkeypatch):
    folder = converted_checkpoint("CodeLlama-7b")
    pipe = pipeline("text-generation", model=str(folder))
    spy = GenerateSpy(pipe, monkeypatch)
    out = pipe("def fibonacci(n):", max_new_tokens=6, do_sample=False)
    meta = MetaReference(folder / "tokenizer.model")
    assert spy.calls[0]["input_ids"] == [meta.encode("def fibonacci(n):", bos=True)]
    new = spy.calls[0]["output"][0][len(spy.calls[0]["input_ids"][0]):]
    assert isinstance(out[0]["generated_text"], str)
    assert out[0]["generated_text"] == "def fibonacci(n):" + pipe.tokenizer.decode(new, skip_special_tokens=True)


@pytest.mark.parametrize("variant, stop", [("CodeLlama-7b", "eos"), ("CodeLlama-7b", "eot"),
                                           ("CodeLlama-70b-Instruct", "step")])
def test_text_generation_stops_on_the_converted_generation_config(converted_checkpoint, monkeypatch, variant, stop):
    folder = converted_checkpoint(variant)
    pipe = pipeline("text-generation", model=str(folder))
    meta = MetaReference(folder / "tokenizer.model")
    stop_id = {"eos": meta.eos_id, "eot": meta.eot_id, "step": meta.step_id}[stop]
    assert stop_id in json.loads((folder / "generation_config.json").read_text())["eos_token_id"]
    spy = GenerateSpy(pipe, monkeypatch)
    prompt = meta.encode("x =", bos=True)
    forced = meta.encode(" 1") + [stop_id]
    pipe("x =", max_new_tokens=30, logits_processor=LogitsProcessorList([Force(forced, len(prompt))]))
    assert spy.calls[0]["output"][0] == prompt + forced


@pytest.mark.parametrize("variant", ["CodeLlama-7b-Instruct", "CodeLlama-70b-Instruct"])
def test_text_generation_chats_with_metas_prompt(converted_checkpoint, monkeypatch, variant):
    folder = converted_checkpoint(variant)
    pipe = pipeline("text-generation", model=str(folder))
    spy = GenerateSpy(pipe, monkeypatch)
    chat = [{"role": "system", "content": "Answer in Python."}, {"role": "user", "content": "Sort a list."}]
    out = pipe(chat, max_new_tokens=4, do_sample=False)
    meta = MetaReference(folder / "tokenizer.model")
    want = meta.chat_step(chat) if variant.startswith("CodeLlama-70b") else meta.chat_inst(chat)
    assert spy.calls[0]["input_ids"] == [want]
    new = spy.calls[0]["output"][0][len(want):]
    answer = out[0]["generated_text"]
    assert answer[:2] == chat and answer[2]["role"] == "assistant"
    assert answer[2]["content"] == pipe.tokenizer.decode(new, skip_special_tokens=True)


def test_text_generation_refuses_the_fill_marker_and_points_to_code_infilling(converted_checkpoint):
    pipe = pipeline("text-generation", model=str(converted_checkpoint("CodeLlama-7b")))
    with pytest.raises(ValueError, match=r"pipeline\('code-infilling'\), which returns the completed code"):
        pipe(CODE, max_new_tokens=2)
    assert pipe.tokenizer(CODE)["input_ids"][1] == pipe.tokenizer.control_token_ids["prefix_token_id"]  # direct use


def test_generation_runs_past_16384_positions(tmp_path, converted_checkpoint, caplog):
    """Rope θ 1e6 reaches far beyond max_position_embeddings; nothing truncates the prompt."""
    from codellama_hf import CodeLlamaConfig, CodeLlamaForCausalLM

    folder = converted_checkpoint("CodeLlama-7b")
    tok = CodeLlamaTokenizer.from_pretrained(folder)
    config = CodeLlamaConfig.from_pretrained(folder, hidden_size=16, num_attention_heads=2, num_key_value_heads=1,
                                             intermediate_size=32, num_hidden_layers=1)
    torch.manual_seed(0)
    model = CodeLlamaForCausalLM(config).eval()
    text = "x = 1\n" * 5000
    n_prompt = len(tok(text)["input_ids"])
    assert n_prompt > config.max_position_embeddings == tok.model_max_length == 16384
    pipe = pipeline("text-generation", model=model, tokenizer=tok)
    with caplog.at_level(logging.WARNING):
        out = pipe(text, max_new_tokens=3, min_new_tokens=3, do_sample=False, return_tensors=True)
    assert "indexing errors" not in caplog.text  # Transformers' length warning is wrong for RoPE; we do not emit it
    ids = out[0]["generated_token_ids"]
    assert len(ids) == n_prompt + 3 and ids[:n_prompt] == tok(text)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert torch.isfinite(logits).all()


# ----- files and names ------------------------------------------------------------------------------------------

NO_IMPORT = """
import json, sys
from transformers import AutoTokenizer
try:
    tok = AutoTokenizer.from_pretrained(sys.argv[1])
    print(json.dumps({"loaded": type(tok).__module__ + "." + type(tok).__name__}))
except Exception as e:
    print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
print(json.dumps({"imported": sorted(m for m in sys.modules if m.startswith("codellama_hf"))}))
"""


def test_a_converted_tokenizer_fails_loudly_without_the_import(converted_checkpoint):
    done = subprocess.run([sys.executable, "-c", NO_IMPORT, str(converted_checkpoint("CodeLlama-7b"))],
                          capture_output=True, text=True, timeout=300)
    # Transformers may print its trust_remote_code question (the folder has auto_map) before the JSON, unanswered.
    first, second = (json.loads(line[line.index("{"):]) for line in done.stdout.strip().splitlines()[-2:])
    assert second["imported"] == []
    assert "error" in first, first
    assert "run `import codellama_hf` before AutoTokenizer.from_pretrained" in first["error"]
    assert "--format llama" in first["error"]


def test_a_folder_written_before_the_guard_still_loads_with_the_import(converted_checkpoint, tmp_path):
    import shutil

    from transformers import AutoTokenizer

    folder = tmp_path / "old"
    shutil.copytree(converted_checkpoint("CodeLlama-7b"), folder)
    (folder / "codellama_tokenizer.json").replace(folder / "tokenizer.json")  # the 0.1 layout
    fresh = CodeLlamaTokenizer.from_pretrained(converted_checkpoint("CodeLlama-7b"))
    for without_model in (False, True):
        if without_model:
            (folder / "tokenizer.model").unlink()
        tok = AutoTokenizer.from_pretrained(folder)
        assert type(tok) is CodeLlamaTokenizer
        assert tok(CODE)["input_ids"] == fresh(CODE)["input_ids"]


def test_the_name_decides_the_variant_where_the_shapes_cannot(tmp_path):
    from transformers import LlamaConfig

    from codellama_hf import CodeLlamaConfig

    cfg = CodeLlamaConfig.from_variant("CodeLlama-7b-Instruct")
    stock = LlamaConfig(**{k: getattr(cfg, k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                         "num_key_value_heads", "intermediate_size", "vocab_size",
                                                         "max_position_embeddings", "rope_parameters")})
    for name in ("CodeLlama-7b-Instruct", "CodeLlama-7b-Instruct-hf", "CodeLlama-7b", "my-model", "CodeLlama-34b"):
        stock.save_pretrained(tmp_path / name)
    got = {name: CodeLlamaConfig.from_pretrained(tmp_path / name)
           for name in ("CodeLlama-7b-Instruct", "CodeLlama-7b-Instruct-hf", "CodeLlama-7b", "my-model",
                        "CodeLlama-34b")}
    assert [(c.variant, c.chat_format) for c in got.values()] == [
        ("CodeLlama-7b-Instruct", "inst"), ("CodeLlama-7b-Instruct", "inst"), ("CodeLlama-7b", "none"),
        (None, None), (None, None)]  # a name that contradicts the shapes is ignored


def test_a_hub_id_decides_the_chat_format_of_a_bare_tokenizer(tiny_vocabs):
    from codellama_hf.tokenization import resolve_chat_format

    assert resolve_chat_format(None, variant=None, folder="codellama/CodeLlama-70b-Instruct-hf") == "step"
    assert resolve_chat_format(None, variant=None, folder="codellama/CodeLlama-13b-Instruct-hf") == "inst"
    assert resolve_chat_format(None, variant=None, folder="someone/CodeLlama-13b-Instruct-GGUF") == "none"


def test_the_text_generation_entry_we_patch_still_has_the_shape_we_copy():
    """install_text_generation() swaps only "impl" in Transformers' task table; this fails first when the table
    moves or its entry changes shape, so that the patch is revisited."""
    from transformers import AutoModelForCausalLM
    from transformers.pipelines import PIPELINE_REGISTRY, SUPPORTED_TASKS, TextGenerationPipeline

    from codellama_hf.pipelines import CodeLlamaTextGenerationPipeline

    entry = PIPELINE_REGISTRY.supported_tasks["text-generation"]
    assert PIPELINE_REGISTRY.supported_tasks is SUPPORTED_TASKS
    assert set(entry) == {"impl", "pt", "default", "type"} and entry["type"] == "text"
    assert entry["impl"] is CodeLlamaTextGenerationPipeline and issubclass(entry["impl"], TextGenerationPipeline)
    assert AutoModelForCausalLM in entry["pt"]
