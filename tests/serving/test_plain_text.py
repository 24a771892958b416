"""Plain text stays plain on every endpoint that takes it: the engine receives SentencePiece's ids for the text,
whatever markers it quotes (`<FILL_ME>`, `<PRE>`, `<EOT>`, `<s>`, `</s>`). The truth is SentencePiece itself
(`MetaReference.encode_text`), not our tokenizer."""

from __future__ import annotations

import httpx
import pytest

from codellama_hf.errors import UserInputError

openai = pytest.importorskip("openai")

# The issue's two strings, and the markers inside code and prose.
TEXTS = ["print('</s><s>')  # <EOT>", "def f():\n    <FILL_ME>\n", "a <FILL_ME> b <FILL_ME> c",
         "x = ' <PRE> a <SUF> b <MID>'  # <EOT> </s>", "<FILL_ME>", "html = '<s>old</s>'"]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)


def post(server, path, body):
    return httpx.post(f"{server.url}{path}", json=body, timeout=60)


def controls(meta) -> set[int]:
    return {meta.prefix_id, meta.suffix_id, meta.middle_id, meta.eot_id, meta.eos_id}


@pytest.mark.parametrize("text", TEXTS)
def test_openai_completion_prompt_is_text(client, submitted, meta, text):
    out = client.completions.create(model="m", prompt=f"# {text}\n{text}", max_tokens=1, temperature=0)
    assert list(submitted[-1].prompt_ids) == meta.encode_text(f"# {text}\n{text}")
    assert not controls(meta) & set(submitted[-1].prompt_ids[1:])
    assert out.usage.prompt_tokens == len(meta.encode_text(f"# {text}\n{text}"))


def test_the_issues_counts(client, submitted, meta):
    """Before the fix these reached the engine as 14 and 10 ids (a control id each, or an infilling prompt)."""
    for text in ("print('</s><s>')  # <EOT>", "def f():\n    <FILL_ME>\n"):
        client.completions.create(model="m", prompt=text, max_tokens=1, temperature=0)
        assert list(submitted[-1].prompt_ids) == meta.encode_text(text)
    assert meta.encode(TEXTS[0], bos=True) != meta.encode_text(TEXTS[0])  # SentencePiece's user pieces: not text


def test_tgi_inputs_and_score_input_strings_are_text(server, submitted, meta):
    for text in TEXTS:
        assert post(server, "/generate", {"inputs": text, "parameters": {"max_new_tokens": 1}}).status_code == 200
        assert list(submitted[-1].prompt_ids) == meta.encode_text(text)
    r = post(server, "/score", {"input_data": {"input_string": TEXTS, "parameters": {"max_new_tokens": 1}}})
    assert r.status_code == 200
    assert [list(s.prompt_ids) for s in submitted[-len(TEXTS):]] == [meta.encode_text(t) for t in TEXTS]


def test_llamacpp_infill_pieces_are_text(server, submitted, meta):
    prefix, suffix = "s = '<FILL_ME> </s>'\n", " <EOT> <PRE>\n"
    r = post(server, "/infill", {"input_prefix": prefix, "input_suffix": suffix, "n_predict": 1})
    assert r.status_code == 200
    text_infill = meta.encode_text("☺" + suffix, bos=False)[2:]
    assert list(submitted[-1].prompt_ids) == ([meta.bos_id, meta.prefix_id] + meta.encode_text(prefix, bos=False)
                                              + [meta.suffix_id] + text_infill + [meta.middle_id])


def test_completion_without_the_template_is_text(server, submitted, meta):
    """/completion parses Code Llama's `<PRE>`/`<SUF>`/`<MID>` template (serving/prompts.py); other text is text."""
    for text in [t for t in TEXTS if "<PRE>" not in t]:
        assert post(server, "/completion", {"prompt": text, "n_predict": 1}).status_code == 200
        assert list(submitted[-1].prompt_ids) == meta.encode_text(text)


def test_a_prompt_that_starts_like_a_rendered_chat_still_points_to_chat(client):
    with pytest.raises(openai.BadRequestError, match="/v1/chat/completions"):
        client.completions.create(model="m", prompt="<s>[INST] hi [/INST]", max_tokens=1)


def test_other_tokenizer_refusals_keep_their_own_reason(client, server, monkeypatch):
    def refuse(text, **kwargs):
        raise UserInputError("the text is too odd; send less odd text")

    monkeypatch.setattr(server.service.tokenizer, "encode_text", refuse)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="m", prompt="def f(", max_tokens=1)
    assert "too odd" in str(e.value) and "rendered" not in str(e.value)


def test_the_batch_jobs_prompts_and_input_strings_are_text(instruct_folder, meta, tmp_path, monkeypatch):
    import json

    from codellama_hf.serving import load_service, run_batch

    from .conftest import KV_CACHE_TOKENS

    service = load_service(instruct_folder, engine="eager", kv_cache_tokens=KV_CACHE_TOKENS)
    try:
        seen, real = [], service.engine.submit
        monkeypatch.setattr(service.engine, "submit", lambda request: seen.append(request) or real(request))
        lines = [{"prompt": TEXTS[0]}, {"input_string": TEXTS[1:3]}]
        (tmp_path / "in.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
        summary = run_batch(service, tmp_path / "in.jsonl", tmp_path / "out.jsonl", default_max_new_tokens=1,
                            quiet=True)
        assert summary.errors == 0
        assert sorted(list(r.prompt_ids) for r in seen) == sorted(meta.encode_text(t) for t in TEXTS[:3])
    finally:
        service.engine.stop()
