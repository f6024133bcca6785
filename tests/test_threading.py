"""The GIL is released around forward passes: other Python threads run meanwhile."""

from __future__ import annotations

import threading
import time

import pytest

import ferrolm
from conftest import MODELS, random_llama


@pytest.fixture(scope="module")
def big_model(tmp_path_factory):
    folder = random_llama(tmp_path_factory.mktemp("gil") / "m", hidden=256, layers=4, ffn=768, ctx=512)
    return ferrolm.load(folder, threads=1)


def counting_rate(seconds: float) -> float:
    """Iterations per second of a pure-Python loop run for `seconds`."""
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        n += 1
    return n / (time.perf_counter() - t0)


def rates_while(work, repeats: int):
    """Runs work() `repeats` times in a thread; meanwhile samples the counting rate here in
    windows a quarter of one call long. Returns (rate alone, [rates during], one call's time)."""
    alone = counting_rate(0.2)
    t0 = time.perf_counter()
    work()
    one_call = time.perf_counter() - t0
    done = threading.Event()

    def worker():
        for _ in range(repeats):
            work()
        done.set()

    t = threading.Thread(target=worker)
    t.start()
    during = []
    while not done.is_set():
        during.append(counting_rate(one_call / 4))
    t.join()
    return alone, during, one_call


def assert_not_starved(alone, during, one_call):
    assert one_call > 0.01, "the call is too short to observe"
    assert len(during) >= 8
    # were the GIL held inside the Rust call, most windows would see (almost) no progress
    median = sorted(during)[len(during) // 2]
    assert median > 0.3 * alone, f"median rate {median:.0f}/s vs {alone:.0f}/s alone"


def test_other_threads_run_during_a_forward_pass(big_model):
    ids = [i % 256 for i in range(1, 500)]
    assert_not_starved(*rates_while(lambda: big_model.logits(ids), repeats=4))


def test_generate_leaves_the_gil_to_other_threads(big_model):
    """Each generate() here is one long prefill inside Rust (the prefix cache emptied first, so
    that the prompt is computed again)."""
    prompt = [i % 256 for i in range(1, 500)]

    def call():
        big_model.clear_prefix_cache()
        return big_model.generate(prompt, max_new_tokens=1)

    assert_not_starved(*rates_while(call, repeats=4))


def test_concurrent_generations_from_two_threads_are_independent():
    model = ferrolm.load(MODELS / "tiny-llama")
    want = model.generate([5, 6, 7], max_new_tokens=24, ignore_eos=True).tokens
    results = []

    def work():
        for _ in range(5):
            results.append(model.generate([5, 6, 7], max_new_tokens=24, ignore_eos=True).tokens)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 15 and all(r == want for r in results)


def test_a_batched_decode_step_leaves_the_gil_to_other_threads(big_model):
    core = big_model._core
    sessions = [core.new_session(512) for _ in range(8)]
    for i, s in enumerate(sessions):
        s.forward([(i + j) % 256 for j in range(1, 200)])

    def steps():
        for s in sessions:
            s.truncate(199)
        for t in range(20):
            ferrolm._core.decode_batch(sessions, [t] * 8)

    assert_not_starved(*rates_while(steps, repeats=4))
