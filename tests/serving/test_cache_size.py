"""The KV cache's size: from --max-concurrent and the model's context, capped by free memory (never total RAM), and
a cache that does not fit refused with what would (issue 22, row 1)."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from codellama_hf.errors import UserInputError
from codellama_hf.serving.cache_size import PAGE_SIZE, plan_cache
from codellama_hf_core.memory import kv_cache_bytes

# CodeLlama-7b's shapes (the demo checkpoint's context, 16k)
CONFIG = SimpleNamespace(hidden_size=4096, num_attention_heads=32, num_key_value_heads=32, head_dim=128,
                         num_hidden_layers=32, vocab_size=32016, intermediate_size=11008)
GIB = 2**30


def test_the_default_is_max_concurrent_full_contexts_when_they_fit():
    plan = plan_cache(CONFIG, dtype="bfloat16", device="cuda", free_bytes=70 * GIB, context=16384, max_concurrent=2)
    assert plan.kv_cache_tokens == 2 * 16384
    assert plan.cache_bytes == kv_cache_bytes(CONFIG, context=2 * 16384, dtype="bfloat16")  # the core's exact bytes
    assert plan.cache_bytes + plan.buffer_bytes <= plan.usable_bytes
    assert "--max-concurrent 2" in plan.describe() and str(plan.kv_cache_tokens) in plan.describe()


@pytest.mark.parametrize("device, free", [("cpu", 24 * GIB), ("cpu", 3 * GIB), ("cuda", 10 * GIB)])
def test_the_default_is_capped_by_free_memory_with_headroom(device, free):
    plan = plan_cache(CONFIG, dtype="float32" if device == "cpu" else "bfloat16", device=device, free_bytes=free,
                      context=16384, max_concurrent=64)
    assert plan.kv_cache_tokens < 64 * 16384 and plan.kv_cache_tokens % PAGE_SIZE == 0
    assert plan.cache_bytes + plan.buffer_bytes <= plan.usable_bytes < free  # headroom kept
    assert "capped by free memory" in plan.describe()
    more = plan_cache(CONFIG, dtype="float32" if device == "cpu" else "bfloat16", device=device,
                      free_bytes=2 * free, context=16384, max_concurrent=64)
    assert more.kv_cache_tokens > plan.kv_cache_tokens  # it follows what is free, not what the machine has


def test_buffers_that_grow_with_the_cache_are_counted():
    # Transformers' attention mask is max_batch_tokens x cache tokens: 8192 tokens per step would cost GBs on CPU
    small = plan_cache(CONFIG, dtype="float32", device="cpu", free_bytes=200 * GIB, context=16384,
                       max_concurrent=4)
    big = plan_cache(CONFIG, dtype="float32", device="cpu", free_bytes=200 * GIB, context=16384, max_concurrent=4,
                     max_batch_tokens=8192)
    assert small.kv_cache_tokens == big.kv_cache_tokens
    assert big.buffer_bytes - small.buffer_bytes >= (8192 - small.max_batch_tokens) * 4 * 65536


def test_a_cache_that_does_not_fit_is_refused_with_what_fits():
    fits = plan_cache(CONFIG, dtype="bfloat16", device="cuda", free_bytes=8 * GIB, context=16384,
                      max_concurrent=1000).kv_cache_tokens
    assert plan_cache(CONFIG, dtype="bfloat16", device="cuda", free_bytes=8 * GIB, context=16384,
                      kv_cache_tokens=fits).kv_cache_tokens == fits
    with pytest.raises(UserInputError) as e:
        plan_cache(CONFIG, dtype="bfloat16", device="cuda", free_bytes=8 * GIB, context=16384,
                   kv_cache_tokens=fits + PAGE_SIZE)
    message = str(e.value)
    assert "\n" not in message and f"--kv-cache-tokens {fits + PAGE_SIZE}" in message
    assert f"--kv-cache-tokens {fits} or less" in message


@pytest.mark.parametrize("kwargs", [dict(max_concurrent=0), dict(kv_cache_tokens=0), dict(max_batch_tokens=-1)])
def test_nonsense_sizes_are_refused(kwargs):
    with pytest.raises(UserInputError):
        plan_cache(CONFIG, dtype="bfloat16", device="cuda", free_bytes=8 * GIB, context=16384, **kwargs)


def test_no_memory_at_all_is_refused_not_planned():
    with pytest.raises(UserInputError, match="no room for a KV cache"):
        plan_cache(CONFIG, dtype="float32", device="cpu", free_bytes=64 * 2**20, context=16384)


def test_serve_refuses_a_cache_that_does_not_fit_in_one_line(instruct_folder):
    """The real command: it exits non-zero with one error line and no traceback."""
    from tests.serving.conftest import free_port

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-m", "codellama_hf_cli", "serve", str(instruct_folder), "--host",
                          "127.0.0.1", "--port", str(free_port()), "--kv-cache-tokens", str(2**40)],
                         capture_output=True, text=True, timeout=240, env=env)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if "--kv-cache-tokens 1099511627776" in line]
    assert len(errors) == 1 and "tokens fit" in errors[0], out.stderr[-2000:]
