"""gpucnn.cpu_parallel's pool: contiguous parts in order, errors raised in
the caller (and the pool usable after), calls made while the pool is busy
(nested in a part, or from another thread) run their parts in the calling
thread with the same results, and a forked child gets a pool of its own."""
import os
import threading

import pytest

from gpucnn import cpu_parallel


def _bounds(n0, n1):
    return (n0, n1, threading.current_thread().name)


def test_parts_are_contiguous_and_in_order():
    out = cpu_parallel.over_parts(_bounds, 10, 3)
    assert [o[:2] for o in out] == [(0, 3), (3, 6), (6, 10)]
    assert out[0][2] == threading.current_thread().name                   # the first part here
    assert all(o[2].startswith("gpucnn-cpu-") for o in out[1:])          # the others in the pool


def test_an_error_in_a_part_is_raised_and_the_pool_stays_usable():
    def part(n0, n1):
        if n0 > 0:
            raise ValueError(f"part {n0}")
        return n0
    with pytest.raises(ValueError, match="part 5"):
        cpu_parallel.over_parts(part, 10, 2)
    assert [o[:2] for o in cpu_parallel.over_parts(_bounds, 10, 2)] == [(0, 5), (5, 10)]


def test_a_call_while_the_pool_is_busy_runs_here():
    def outer(n0, n1):   # a parallel call inside a part: the pool is busy
        return cpu_parallel.over_parts(_bounds, n1 - n0, 2)
    out = cpu_parallel.over_parts(outer, 8, 2)
    assert [[o[:2] for o in inner] for inner in out] == [[(0, 2), (2, 4)], [(0, 2), (2, 4)]]
    names = {o[2] for inner in out for o in inner}
    assert threading.current_thread().name in names


def test_concurrent_callers_get_their_own_results():
    results, errors = {}, []

    def caller(k):
        try:
            for _ in range(200):
                got = cpu_parallel.over_parts(lambda n0, n1: (k, n0, n1), 10 * k, 2)
                assert got == [(k, 0, 5 * k), (k, 5 * k, 10 * k)]
            results[k] = True
        except BaseException as e:   # reported below
            errors.append(e)
    threads = [threading.Thread(target=caller, args=(k,)) for k in (1, 2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and sorted(results) == [1, 2, 3]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_makes_its_own_pool():
    cpu_parallel.over_parts(_bounds, 4, 2)   # the parent's pool exists
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:   # child: the parent's worker threads do not exist here
        try:
            ok = [o[:2] for o in cpu_parallel.over_parts(_bounds, 4, 2)] == [(0, 2), (2, 4)]
            os.write(w, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(w)
    assert os.read(r, 1) == b"1"
    os.waitpid(pid, 0)
