"""tinygpt.decoding.engine.Scheduler, continuous batching in-process: requests from many threads join and leave one batch,
cancelling frees a slot at once, each request keeps its own settings, a step runs over the smallest bucket."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.test_engine import N_POSITIONS, reference_sliding_greedy
from tests.tiny_models import tiny_model
from tinygpt.decoding.engine import Engine, Request, batch_buckets
from tinygpt.decoding.scheduler import Scheduler


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_model(tokenizer, n_positions=N_POSITIONS)


def test_batch_buckets():
    assert batch_buckets(1) == [1]
    assert batch_buckets(8) == [1, 2, 4, 8]
    assert batch_buckets(12) == [1, 2, 4, 8, 12]
    assert batch_buckets(256, smallest=64) == [64, 128, 256]  # the prefill spans of a 256-token window
    assert batch_buckets(48, smallest=64) == [48]


def test_requests_from_many_threads_join_and_leave_one_batch(model, tokenizer):
    scheduler = Scheduler(Engine(model, max_batch=3))
    texts = ["the quick", "a lazy dog", "0123", "fox", "over the", "brown", "jumps", "dog 0"]
    lengths = [25, 10, 60, 5, 40, 1, 15, 30]  # they finish at different steps; one slides; slots are reused

    def decode(text, length):
        time.sleep(0.01 * length % 7)  # arriving at different moments, while others decode
        return list(scheduler.stream(Request(tokenizer.encode(text), max_new_tokens=length)))

    with ThreadPoolExecutor(max_workers=8) as pool:
        outputs = list(pool.map(decode, texts, lengths))
    for text, length, output in zip(texts, lengths, outputs, strict=True):
        assert output == reference_sliding_greedy(model, tokenizer.encode(text), length)
    scheduler.close()


def test_a_request_joins_while_the_others_decode(model, tokenizer):
    """A request arriving mid-decode starts at once, not when the batch has drained (the loop keeps a replay in
    flight, so it must admit with copies on their way)."""
    from tinygpt.decoding.request import Live

    engine = Engine(model, max_batch=2)
    long = Live(Request(tokenizer.encode("the quick"), max_new_tokens=100), lambda: False)
    short = Live(Request(tokenizer.encode("a lazy dog"), max_new_tokens=5), lambda: False)
    arriving, ended, sent = [long], [], []
    with engine.busy:
        for entry, tokens in engine.decode(lambda idle: arriving.pop() if arriving else None):
            if entry is long and long.produced >= 10 and not sent:
                arriving.append(short)  # arrives once the long one is 10 tokens in
                sent.append(short)
            if tokens is None:
                ended.append((entry, long.produced))
    (first, long_done_then), (second, _) = ended
    assert first is short and second is long
    assert long_done_then < 30  # it ended while the long one was under way, not after its 100 tokens
    assert short.tokens[len(short.request.prompt_ids) :] == reference_sliding_greedy(model, short.request.prompt_ids, 5)


def test_cancelling_frees_the_slot_at_once(model, tokenizer):
    scheduler = Scheduler(Engine(model, max_batch=1))  # one slot: the next request needs this one's
    prompt = tokenizer.encode("the quick")
    endless = scheduler.stream(Request(prompt, max_new_tokens=10**9))
    next(endless)
    endless.close()  # cancels it
    # The next request gets the slot now, not after 10**9 tokens (in a thread, so a broken cancel fails, not hangs).
    answered = []
    waiter = threading.Thread(
        target=lambda: answered.append(list(scheduler.stream(Request(prompt, max_new_tokens=20))))
    )
    waiter.daemon = True
    waiter.start()
    waiter.join(timeout=10)
    assert answered == [reference_sliding_greedy(model, prompt, 20)]
    stop = threading.Event()
    stopped = scheduler.stream(Request(prompt, max_new_tokens=10**9), stop_event=stop)
    next(stopped)
    stop.set()
    assert len(list(stopped)) <= 2  # at most what was already on its way
    assert len(list(scheduler.stream(Request(prompt, max_new_tokens=3)))) == 3
    scheduler.close()


def test_each_request_keeps_its_settings_in_a_shared_batch(model, tokenizer):
    prompt = tokenizer.encode("the quick brown")
    engine = Engine(model, max_batch=4)
    greedy = reference_sliding_greedy(model, prompt, 30)
    alone = engine.generate([Request(prompt, max_new_tokens=30, temperature=1.5, seed=11)])[0]
    batch = [
        Request(prompt, max_new_tokens=30, temperature=1.5, seed=11),  # the same seed as alone
        Request(prompt, max_new_tokens=30),  # greedy
        Request(prompt, max_new_tokens=30, temperature=1.5, seed=12),
        Request(prompt, max_new_tokens=7, stop_ids=[greedy[5]], temperature=5.0, top_k=1),  # top-1: greedy, stops
    ]
    scheduler = Scheduler(engine)
    results = [None] * len(batch)

    def decode(index):
        results[index] = list(scheduler.stream(batch[index]))

    threads = [threading.Thread(target=decode, args=(index,)) for index in range(len(batch))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seeded, batched_greedy, other_seed, stopped = results
    assert seeded == alone  # a seed draws the same tokens whatever else is in the batch
    assert other_seed != seeded
    assert batched_greedy == greedy
    assert stopped == greedy[: greedy.index(greedy[5])]
    scheduler.close()


def test_a_step_runs_over_the_smallest_bucket_covering_the_live_slots(model, tokenizer):
    engine = Engine(model, max_batch=8)
    used = []
    for key, step in list(engine.steps.items()):
        engine.steps[key] = lambda step=step, key=key: (used.append(key[1]), step())
    prompt = tokenizer.encode("the quick")
    engine.generate([Request(prompt, max_new_tokens=10)])
    assert set(used) == {1}  # one request alone: one-row steps, as in an engine of one slot
    used.clear()
    lengths = [20, 5, 5]  # three join (bucket 4); the two in slots 1 and 2 leave, slot 0 decodes on alone
    engine.generate([Request(prompt, max_new_tokens=n) for n in lengths])
    assert used[0] == 4 and used[-1] == 1 and set(used) == {1, 4}


def test_an_engine_failure_reaches_every_waiting_caller(model, tokenizer):
    engine = Engine(model, max_batch=2)
    scheduler = Scheduler(engine)

    def broken(*args):
        raise RuntimeError("the device fell over")

    engine.encode = broken
    with pytest.raises(RuntimeError, match="fell over"):
        list(scheduler.stream(Request(tokenizer.encode("the"), max_new_tokens=5)))
    scheduler.close()
