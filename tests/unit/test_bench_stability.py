"""The benchmark's judgement of its own measurements, with plain data.

A cell measured while other work ran on the machine is flagged and re-run (bounded);
the rounds' spread is reported; the memory figures are parsed from smaps text.
"""

from __future__ import annotations

import math

import pytest

from loadtests import bench, worker_memory
from loadtests.bench import Sample

LIMIT = 0.05


def sample(other: float = 0.0, ok: bool = True, rnd: int = 1, server: str = "engine",
           rps: float = 1000.0, cpu: float = 100.0) -> Sample:
    """A one-second sample whose machine ran *other* cores of unrelated work."""
    s = Sample("tcp-close", server, rnd, ok=ok, clients=32, rps=rps, requests=int(rps))
    s.window_s = 1.0
    s.server_cores, s.gen_cores, s.softirq_cores = 1.0, 0.6, 0.3
    s.machine_cores = 1.9 + other
    s.cpu_per_req_us = cpu
    return s


def test_other_load_is_what_the_server_generator_and_softirq_do_not_explain() -> None:
    assert sample(0.3).other_cores == pytest.approx(0.3)
    assert sample(0.0).other_cores == pytest.approx(0.0)
    s = sample(0.0)
    s.machine_cores = 1.5  # counters read at slightly different instants: never negative
    assert s.other_cores == 0.0


def test_busy_means_other_load_above_the_limit() -> None:
    assert not bench.is_busy(sample(0.04), LIMIT)
    assert bench.is_busy(sample(0.06), LIMIT)
    assert not bench.is_busy(sample(0.5, ok=False), LIMIT)  # a failure is not "busy"
    empty = sample(0.5)
    empty.window_s = 0.0
    assert not bench.is_busy(empty, LIMIT)


def test_a_busy_cell_is_rerun_a_bounded_number_of_times() -> None:
    assert not bench.needs_rerun([sample(0.0)], LIMIT, reruns=2)
    assert bench.needs_rerun([sample(0.5)], LIMIT, reruns=2)
    assert bench.needs_rerun([sample(0.5), sample(0.5)], LIMIT, reruns=2)
    assert not bench.needs_rerun([sample(0.5)] * 3, LIMIT, reruns=2)  # 1 + 2 re-runs
    assert not bench.needs_rerun([sample(0.5)], LIMIT, reruns=0)
    assert not bench.needs_rerun([sample(0.5), sample(0.0)], LIMIT, reruns=2)
    assert not bench.needs_rerun([sample(0.5, ok=False)], LIMIT, reruns=2)


def test_the_first_quiet_attempt_is_kept() -> None:
    attempts = [sample(0.8), sample(0.01, rps=2000), sample(0.0, rps=3000)]
    chosen = bench.choose_sample(attempts, LIMIT)
    assert chosen is attempts[1]
    assert chosen.attempts == 3 and not chosen.busy


def test_when_every_attempt_is_busy_the_least_busy_is_kept_and_flagged() -> None:
    attempts = [sample(0.8), sample(0.3), sample(0.6)]
    chosen = bench.choose_sample(attempts, LIMIT)
    assert chosen is attempts[1]
    assert chosen.busy and chosen.attempts == 3


def test_failed_attempts_are_kept_only_when_nothing_succeeded() -> None:
    attempts = [sample(0.8), sample(0.0, ok=False)]
    assert bench.choose_sample(attempts, LIMIT) is attempts[0]
    failed = [sample(0.0, ok=False)]
    chosen = bench.choose_sample(failed, LIMIT)
    assert chosen is failed[0] and not chosen.busy


def test_spread_is_range_over_median() -> None:
    assert bench.spread([100.0, 104.0, 102.0]) == pytest.approx(0.04 / 1.02)
    assert bench.spread([100.0]) == 0.0
    assert math.isnan(bench.spread([]))
    assert bench.spread([1.0, math.nan, 1.1]) == pytest.approx(0.1 / 1.05)


def test_summary_counts_busy_rounds_and_reruns() -> None:
    quiet = sample(0.0, rnd=1, cpu=100.0)
    quiet.attempts = 2  # re-run once, then quiet
    busy = sample(0.4, rnd=2, cpu=110.0)
    busy.attempts, busy.busy = 3, True
    summary = bench.summarize([quiet, busy])["tcp-close", "engine"]
    assert summary.busy_rounds == 1
    assert summary.reruns == 3
    assert summary.cpu_spread == pytest.approx(10.0 / 105.0)
    assert "1 busy" in summary.quality and "3 re-run" in summary.quality


def test_targets_name_busy_rounds_and_judge_memory() -> None:
    eng = sample(0.4, server="engine", cpu=104.0)
    eng.busy = True
    floor = sample(0.0, server="floor", cpu=100.0)
    summaries = bench.summarize([eng, floor])
    memory = [
        worker_memory.ServerMemory("engine", "http", 200, [
            worker_memory.ProcessMemory(1, uss=1300, pss=5000, rss=20000)]),
        worker_memory.ServerMemory("forking", "http", 200, [
            worker_memory.ProcessMemory(2, uss=1000, pss=6000, rss=14000)]),
    ]
    targets = {t.text: t for t in bench.evaluate_targets(summaries, 32, memory)}
    cpu = targets["TCP, one connection per request: engine (default pool) CPU/request "
                  "≤ 1.05x the floor's"]
    assert cpu.met is True and "busy machine: 1 and 0" in cpu.evidence
    mem = targets["Memory: an idle engine (default pool) worker's USS ≤ 1.25x a "
                  "ForkingTCPServer child's"]
    assert mem.met is False and "1.30x" in mem.evidence


USUAL = 20.0  # the run's median speed probe so far, ms


def timed(speed_ms: float, other: float = 0.0, rps: float = 1000.0) -> Sample:
    """A sample whose speed probe around it took *speed_ms*."""
    s = sample(other, rps=rps)
    s.speed_ms = speed_ms
    return s


def test_slow_means_the_probe_ran_over_ten_per_cent_slower_than_usual() -> None:
    assert not bench.is_slow(timed(21.9), USUAL)
    assert bench.is_slow(timed(22.1), USUAL)
    assert not bench.is_slow(timed(30.0), math.inf)  # no probe yet: nothing to compare
    assert not bench.is_slow(sample(0.0), USUAL)  # no probe (NaN): not slow


def test_a_slow_machine_is_measured_again_within_the_rerun_budget() -> None:
    assert bench.needs_rerun([timed(25.0)], LIMIT, reruns=2, usual_ms=USUAL)
    assert not bench.needs_rerun([timed(20.5)], LIMIT, reruns=2, usual_ms=USUAL)
    assert not bench.needs_rerun([timed(25.0)] * 3, LIMIT, reruns=2, usual_ms=USUAL)
    assert not bench.needs_rerun([timed(25.0)], LIMIT, reruns=2)  # no usual yet: busy only


def test_the_usual_speed_is_the_median_once_there_are_enough_probes() -> None:
    assert bench.usual_speed_ms([20.0] * 5) == math.inf
    assert bench.usual_speed_ms([19.0, 21.0, 20.0, 30.0, 20.5, 19.5]) == pytest.approx(20.25)


def test_the_first_attempt_quiet_and_at_speed_is_kept_else_the_fastest_flagged() -> None:
    attempts = [timed(26.0), timed(21.0, other=0.3), timed(21.0, rps=2000)]
    chosen = bench.choose_sample(attempts, LIMIT, USUAL)
    assert chosen is attempts[2] and not chosen.slow and not chosen.busy
    slow = [timed(26.0), timed(24.0), timed(25.0)]
    chosen = bench.choose_sample(slow, LIMIT, USUAL)
    assert chosen is slow[1] and chosen.slow and chosen.attempts == 3


def test_summary_and_targets_count_slow_rounds() -> None:
    eng, floor = timed(26.0), timed(20.0)
    eng.slow = True
    floor.server = "floor"
    summaries = bench.summarize([eng, floor])
    assert "1 slow" in summaries["tcp-close", "engine"].quality
    targets = {t.text: t for t in bench.evaluate_targets(summaries, 32, [])}
    cpu = targets["TCP, one connection per request: engine (default pool) CPU/request "
                  "≤ 1.05x the floor's"]
    assert "slow machine: 1 and 0" in cpu.evidence


def test_the_speed_probe_times_real_work() -> None:
    first, second = bench.machine_speed_ms(rounds=1), bench.machine_speed_ms(rounds=1)
    assert 0 < first < 5000 and 0 < second < 5000
    assert bench.machine_speed_ms(rounds=3) <= max(first, second) * 3


SMAPS = """\
55d0c0000000-55d0c0021000 rw-p 00000000 00:00 0                          [heap]
Size:                132 kB
Private_Clean:         0 kB
Private_Dirty:        40 kB
7f0000000000-7f0000100000 rw-p 00000000 00:00 0
Size:               1024 kB
Private_Clean:         4 kB
Private_Dirty:       300 kB
7f1000000000-7f1000001000 rw-p 00010000 08:01 1234 /usr/lib/libpython3.11.so.1.0
Private_Clean:         0 kB
Private_Dirty:        12 kB
7f2000000000-7f2000001000 rw-s 00000000 00:01 99                         /dev/zero (deleted)
Private_Dirty:         0 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
Private_Dirty:         8 kB
"""


def test_private_memory_is_summed_per_mapping_kind() -> None:
    assert worker_memory.private_by_kind(SMAPS) == {
        "heap": 40, "anon": 304, "libpython": 12, "files and shared memory": 0, "stack": 8,
    }


def test_the_instruction_table_gives_each_variant_against_the_floor() -> None:
    counts = {
        "line": {"floor": 84_645.0, "floor + SHUT_WR": 85_509.0, "engine (default)": 90_683.0},
        "http": {"floor": 306_213.0, "engine (default)": 313_353.0},  # one count missing
    }
    lines = bench.instruction_lines(counts)
    table = [line for line in lines if line.startswith("|")]
    assert table[0] == "| variant | echo (raw TCP) | x floor | HTTP | x floor |"
    assert table[2] == "| floor | 84,645 | 1.00x | 306,213 | 1.00x |"
    assert table[3] == "| floor + SHUT_WR | 85,509 | 1.01x | - | - |"
    assert table[4] == "| engine (default) | 90,683 | 1.07x | 313,353 | 1.02x |"


def test_each_round_runs_the_servers_one_place_later() -> None:
    servers = ["engine", "engine-static", "floor", "gunicorn"]
    orders = [bench.round_order(servers, rnd) for rnd in range(1, 6)]
    assert orders[0] == servers
    assert orders[1] == ["engine-static", "floor", "gunicorn", "engine"]
    assert orders[4] == servers  # a full turn
    # Over as many rounds as servers, each server runs once in every position.
    for position in range(len(servers)):
        assert sorted(order[position] for order in orders[:4]) == sorted(servers)


def paired(server: str, block: int, cpu: float, pair: str = "engine/floor") -> Sample:
    """A cell of the paired phase: block *block* of *pair*."""
    s = sample(0.0, server=server, rnd=block, cpu=cpu)
    s.pair = pair
    return s


def test_paired_ratios_are_per_abba_block_means() -> None:
    cells = [
        # block 1 on a fast machine, block 2 on one 50% slower: the ratio holds.
        paired("engine", 1, 90.0), paired("floor", 1, 100.0), paired("floor", 1, 100.0),
        paired("engine", 1, 92.0),
        paired("engine", 2, 135.0), paired("floor", 2, 150.0), paired("floor", 2, 152.0),
        paired("engine", 2, 137.0),
        # Another pair's cells, a block without the floor and one with a failed sample
        # are not mixed in.
        paired("engine", 1, 500.0, pair="engine/gunicorn"),
        paired("engine", 3, 10.0),
        paired("engine", 4, 10.0), paired("floor", 4, 100.0),
    ]
    cells[-1].ok = False
    assert bench.abba("engine", "floor") == ("engine", "floor", "floor", "engine")
    ratios = bench.paired_ratios(cells, "tcp-close", "engine", "floor", "cpu_per_req_us")
    assert ratios == [pytest.approx(0.91), pytest.approx(136.0 / 151.0)]


def test_a_target_with_paired_cells_is_judged_on_them() -> None:
    # The rounds say 1.20x (the engine's round ran on a slower minute); side by side,
    # the engine uses 0.95x the floor's CPU.
    summaries = bench.summarize([sample(server="engine", cpu=120.0),
                                 sample(server="floor", cpu=100.0)])
    cells = [paired(server, block, cpu)
             for block in (1, 2, 3)
             for server, cpu in zip(bench.abba("engine", "floor"), (95, 100, 100, 95),
                                    strict=True)]
    label = ("TCP, one connection per request: engine (default pool) CPU/request "
             "≤ 1.05x the floor's")
    judged = {t.text: t for t in bench.evaluate_targets(summaries, 32, (), cells)}[label]
    assert judged.met is True
    assert judged.evidence.startswith("side by side, 0.95x (median of 3 ABBA blocks")
    assert "the rounds: 120.0 vs 100.0 µs = 1.20x" in judged.evidence
    unpaired = {t.text: t for t in bench.evaluate_targets(summaries, 32)}[label]
    assert unpaired.met is False


def test_a_paired_block_alternates_a_b_b_a() -> None:
    order = bench.alternation("engine", "floor", 3)
    assert order == ["engine", "floor", "floor", "engine"] * 3
    # As many runs of each, and each server's mean position is the same: a steady drift
    # of the machine's speed over the block falls equally on both.
    positions = {key: [i for i, k in enumerate(order) if k == key] for key in set(order)}
    assert len(positions["engine"]) == len(positions["floor"]) == 6
    assert sum(positions["engine"]) == sum(positions["floor"])


def run(rps: float, seconds: float, cpu_s: float, p99: float, *, served: int | None = None,
        ok: bool = True) -> Sample:
    """One run of a paired block: *rps* for *seconds*, *cpu_s* of server CPU."""
    s = Sample("http-close", "engine", 2, ok=ok, clients=32, rps=rps,
               requests=int(rps * seconds), p50_us=p99 / 3, p99_us=p99, served=served)
    s.pair = "engine/floor"
    s.window_s = seconds
    s.server_cpu_s = cpu_s
    s.server_cores, s.gen_cores, s.softirq_cores = cpu_s / seconds, 0.5, 0.25
    s.machine_cores = s.server_cores + 0.75
    s.errors, s.procs = 1, 3
    return s


def test_a_servers_runs_add_up_to_one_sample() -> None:
    runs = [run(10_000, 1.0, 1.0, 6000.0, served=32), run(5_000, 1.0, 0.8, 9000.0, served=30),
            run(8_000, 1.0, 0.9, 7000.0, served=32)]
    merged = bench.merge_runs(runs)
    assert (merged.server, merged.round, merged.pair) == ("engine", 2, "engine/floor")
    assert merged.ok
    assert merged.requests == 23_000
    assert merged.rps == pytest.approx(23_000 / 3.0)  # requests over the runs' time
    assert merged.cpu_per_req_us == pytest.approx(2.7 / 23_000 * 1e6)
    assert merged.p99_us == 7000.0  # the runs' median
    assert merged.errors == 3
    assert merged.served == 30
    assert merged.window_s == pytest.approx(3.0)
    assert merged.server_cores == pytest.approx(0.9)
    assert merged.other_cores == pytest.approx(0.0)
    assert merged.procs == 3


def test_a_failed_run_fails_the_merged_sample() -> None:
    runs = [run(10_000, 1.0, 1.0, 6000.0), run(0, 1.0, 0.0, math.nan, ok=False)]
    runs[1].note = "wrk gave no result"
    merged = bench.merge_runs(runs)
    assert not merged.ok
    assert merged.note == "wrk gave no result"
    assert merged.requests == 10_000  # what the other runs measured is still shown
