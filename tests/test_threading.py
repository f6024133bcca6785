"""The GIL is released around forward passes: other Python threads run meanwhile."""

from __future__ import annotations

import threading
import time

import ferrolm
from conftest import MODELS, random_llama


def test_other_threads_run_while_the_model_works(tmp_path):
    model = ferrolm.load(random_llama(tmp_path / "m", hidden=256, layers=4, ffn=768, ctx=512), threads=1)
    ids = [i % 256 for i in range(1, 500)]
    t0 = time.perf_counter()
    model.logits(ids)
    alone = time.perf_counter() - t0

    ticks = 0
    stop = threading.Event()

    def spin():
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            time.sleep(0)  # yields the GIL only if nobody else needs it

    # time the pure-Python thread's progress during one long Rust call
    worker = threading.Thread(target=spin)
    worker.start()
    time.sleep(0.01)
    before = ticks
    t0 = time.perf_counter()
    model.logits(ids)
    during_call = time.perf_counter() - t0
    progressed = ticks - before
    stop.set()
    worker.join()
    assert alone > 0.02, "the call is too short to observe"
    # with the GIL held the whole time the counter would advance at most a couple of times
    assert progressed > 1000, f"only {progressed} ticks in {during_call:.3f}s"


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


def test_generate_leaves_the_gil_to_other_threads(tmp_path):
    """A pure-Python thread keeps most of its speed while generate() runs in another thread.
    Each generate() here is one long prefill inside Rust: were the GIL held there, the counting
    thread would stall for the whole call."""
    model = ferrolm.load(random_llama(tmp_path / "g", hidden=256, layers=4, ffn=768, ctx=512), threads=1)
    prompt = [i % 256 for i in range(1, 500)]

    def rate(seconds: float) -> float:
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            n += 1
        return n / (time.perf_counter() - t0)

    alone = rate(0.2)
    t0 = time.perf_counter()
    model.generate(prompt, max_new_tokens=1)
    one_call = time.perf_counter() - t0
    done = threading.Event()
    rates = []

    def generate():
        for _ in range(4):
            model.generate(prompt, max_new_tokens=1)
        done.set()

    t = threading.Thread(target=generate)
    t.start()
    while not done.is_set():
        rates.append(rate(one_call / 4))
    t.join()
    assert one_call > 0.02, "the call is too short to observe"
    assert len(rates) >= 8
    assert sorted(rates)[len(rates) // 2] > 0.3 * alone
