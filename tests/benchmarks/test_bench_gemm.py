"""`benchmarks/bench_gemm_gpu.py --only`: the shape filter, checked before any GPU work."""
import pytest

from tests.benchmarks.scripts import load

bench = load("bench_gemm_gpu")


def test_only_selects_shapes_by_model_and_role():
    assert bench.select_shapes("") == bench.SHAPES
    assert [role for _, role, _, _ in bench.select_shapes("stacked")] == \
        ["gate+up stacked", "q+k+v stacked", "gate+up stacked"]
    assert [(model, role) for model, role, _, _ in bench.select_shapes("dream-7b down,llada-8b gate+up")] == \
        [("dream-7b", "down"), ("llada-8b", "gate+up stacked")]


def test_only_matching_nothing_names_the_shapes():
    with pytest.raises(ValueError, match=r"'nothing' matches none of .*'llada-8b q/k/v/o'"):
        bench.select_shapes("nothing")


def test_contenders_are_timed_in_a_new_order_each_round(monkeypatch):
    """Every contender once per round, ROUNDS rounds, alternating its captures, not in one fixed order (a contender
    that always follows the same one inherits its clock and power state); a contender whose capture failed is NaN."""
    class Graph:
        def __init__(self, key, capture):
            self.key, self.capture = key, capture

        def replay(self):
            pass

    made = {}

    def captured(fn):
        key = fn()
        made[key] = made.get(key, 0) + 1
        return None if key == "broken" else Graph(key, made[key] - 1)

    timed = []

    def do_bench(replay, **_):
        graph = replay.__self__
        timed.append((graph.key, graph.capture))
        return 1.0 + len(graph.key)

    monkeypatch.setattr(bench, "captured", captured)
    monkeypatch.setattr(bench.triton.testing, "do_bench", do_bench)
    keys = ["bf16", "fp8", "w4a4_gemm", "w4a4_unpack", "broken"]
    times = bench.interleaved_ms({key: (lambda key=key: key) for key in keys})
    assert made == dict.fromkeys(keys, bench.GRAPHS)
    live = len(keys) - 1
    rounds = [timed[i:i + live] for i in range(0, len(timed), live)]
    assert len(rounds) == bench.ROUNDS
    for r, done in enumerate(rounds):
        assert sorted(key for key, _ in done) == sorted(keys[:-1])
        assert {capture for _, capture in done} == {r % bench.GRAPHS}
    assert len({tuple(key for key, _ in done) for done in rounds}) > 1
    followers = {rounds[r][rounds[r].index(("fp8", r % bench.GRAPHS)) + 1][0] for r in range(bench.ROUNDS)
                 if rounds[r][-1][0] != "fp8"}
    assert len(followers) > 1
    assert times["w4a4_gemm"] == 1.0 + len("w4a4_gemm")
    assert times["broken"] != times["broken"]


def test_clean_flush_reads_l2_empty_before_every_timed_repetition(monkeypatch):
    """`--flush clean`: bench_ms flushes before each timed call (not before warm-up calls) and returns the median of
    the timed ones."""
    calls = []
    ticks = iter(range(1000))

    class Event:
        def __init__(self, **_):
            self.at = None

        def record(self):
            self.at = next(ticks)
            calls.append("event")

        def synchronize(self):
            pass

        def elapsed_time(self, end):
            return float(end.at - self.at)

    monkeypatch.setattr(bench, "FLUSH", "clean")
    monkeypatch.setattr(bench, "l2_flush", lambda kind: (lambda: calls.append(f"flush:{kind}")))
    monkeypatch.setattr(bench.torch.cuda, "Event", Event)
    monkeypatch.setattr(bench.torch.cuda, "synchronize", lambda: None)
    ms = bench.bench_ms(lambda: calls.append("fn"), warmup=2, rep=3)
    assert ms == 1.0  # each timed call spans one tick of the fake clock
    # One untimed call, then the estimate: 5 flushed calls between two events (1 tick: 0.2 ms each) ...
    assert calls[:13] == ["fn", "event"] + ["flush:clean", "fn"] * 5 + ["event"]
    # ... so 2 / 0.2 warm-up calls, unflushed, and 3 / 0.2 timed calls, each flushed first.
    assert calls[13:23] == ["fn"] * 10
    assert calls[23:] == ["flush:clean", "event", "fn", "event"] * 15
