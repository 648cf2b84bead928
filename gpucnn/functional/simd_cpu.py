"""Register-tiled float32 micro-kernels for the CPU path, written as LLVM IR
vector code inside Numba (numba.extending.intrinsic): the one place where
the CPU path states its vector arithmetic explicitly instead of hoping that
LLVM vectorizes a loop. direct_cpu builds its convolutions from them.

A vector holds LANES consecutive float32 values (16 with AVX-512, 8
otherwise; LLVM splits wider vectors on narrower machines, so the code is
correct on any CPU). Both kernels keep a tile of accumulators in registers
through a loop over taps j, each tap a (flat) offset off[j] into a
zero-padded input:

    conv_tile    y[k, p] = sum_j w[j, k] * x[off[j] + p]
                 a tile of KB output rows by PB vectors of positions p:
                 per tap PB unaligned loads of x, KB broadcasts of w,
                 KB*PB fused multiply-adds (KB = 8, PB = 3: 24 of the 32
                 AVX-512 registers accumulate, 11 loads per 24 FMAs)
    grad_tile    dw[k, j] = sum over samples n and positions p of
                 dy[n, k, p] * x[n, off[j] + p]
                 a tile of KB rows by JB taps, each accumulator a vector of
                 partial sums over lanes, added across lanes at the end;
                 per step KB loads of dy, JB of x, KB*JB FMAs

Numba caches the kernels that inline these (cache=True) by their own
module's time stamp only: after editing this file, touch direct_cpu.py (or
clear __pycache__) so that they are compiled again.

The sums run in a fixed order (taps, then samples and positions, lanes
added pairwise at the end), so results are deterministic.
"""
import functools

import llvmlite.binding as llvm
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

LANES = 16 if "+avx512f" in llvm.get_host_cpu_features().flatten() else 8

_F32 = ir.FloatType()
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_VEC = ir.VectorType(_F32, LANES)


def _loop(builder, count, carried, body):
    """Emit `for i in range(count)` carrying the values `carried` (a list):
    body(builder, i, values) returns their next values. Returns the values
    after the loop."""
    entry = builder.block
    head = builder.append_basic_block("head")
    step = builder.append_basic_block("step")
    done = builder.append_basic_block("done")
    builder.branch(head)
    builder.position_at_end(head)
    i = builder.phi(_I64)
    i.add_incoming(ir.Constant(_I64, 0), entry)
    phis = []
    for v in carried:
        phi = builder.phi(v.type)
        phi.add_incoming(v, entry)
        phis.append(phi)
    builder.cbranch(builder.icmp_signed("<", i, count), step, done)
    builder.position_at_end(step)
    nxt = body(builder, i, phis)
    tail = builder.block
    i.add_incoming(builder.add(i, ir.Constant(_I64, 1)), tail)
    for phi, v in zip(phis, nxt):
        phi.add_incoming(v, tail)
    builder.branch(head)
    builder.position_at_end(done)
    return phis


def _at(builder, base, *terms):
    """Pointer base + the sum of the i64 terms (elements)."""
    index = terms[0]
    for t in terms[1:]:
        index = builder.add(index, t)
    return builder.gep(base, [index])


def _vload(builder, ptr):
    return builder.load(builder.bitcast(ptr, _VEC.as_pointer()), align=4)


def _vstore(builder, value, ptr):
    builder.store(value, builder.bitcast(ptr, _VEC.as_pointer()), align=4)


def _splat(builder, scalar):
    one = builder.insert_element(ir.Constant(_VEC, ir.Undefined), scalar, ir.Constant(_I32, 0))
    return builder.shuffle_vector(one, ir.Constant(_VEC, ir.Undefined),
                                  ir.Constant(ir.VectorType(_I32, LANES), [0] * LANES))


def _fma(builder):
    name = f"llvm.fma.v{LANES}f32"
    return builder.module.globals.get(name) or ir.Function(builder.module, ir.FunctionType(_VEC, [_VEC] * 3),
                                                          name)


def _const(n):
    return ir.Constant(_I64, n)


def _pointers(context, builder, sig, args, arrays):
    """Data pointers of the array arguments at the positions `arrays`."""
    return [context.make_array(sig.args[i])(context, builder, args[i]).data for i in arrays]


@functools.lru_cache(maxsize=None)
def conv_tile(KB, PB):
    """conv_tile(y, y0, ys, x, x0, off, w, w0, J): for k < KB and p < PB*LANES,
    y[y0 + k*ys + p] = sum over j < J of w[w0 + j*KB + k] * x[x0 + off[j] + p]
    (flat float32 arrays y, x, w; int64 off). Stores, does not add."""
    @intrinsic
    def tile(typingctx, y, y0, ys, x, x0, off, w, w0, J):
        sig = types.void(y, types.intp, types.intp, x, types.intp, off, w, types.intp, types.intp)

        def codegen(context, builder, sig, args):
            yp, xp, op, wp = _pointers(context, builder, sig, args, (0, 3, 5, 6))
            _, y0_, ys_, _, x0_, _, _, w0_, J_ = args
            fma = _fma(builder)

            def tap(b, j, acc):
                base = b.add(x0_, b.load(b.gep(op, [j])))
                xs = [_vload(b, _at(b, xp, base, _const(LANES * q))) for q in range(PB)]
                wrow = b.add(w0_, b.mul(j, _const(KB)))
                out = []
                for k in range(KB):
                    wk = _splat(b, b.load(_at(b, wp, wrow, _const(k))))
                    out += [b.call(fma, [wk, xs[q], acc[k * PB + q]]) for q in range(PB)]
                return out
            acc = _loop(builder, J_, [ir.Constant(_VEC, [0.0] * LANES)] * (KB * PB), tap)
            for k in range(KB):
                row = builder.add(y0_, builder.mul(ys_, _const(k)))
                for q in range(PB):
                    _vstore(builder, acc[k * PB + q], _at(builder, yp, row, _const(LANES * q)))
            return context.get_dummy_value()
        return sig, codegen
    return tile


@functools.lru_cache(maxsize=None)
def grad_tile(KB, JB):
    """grad_tile(dw, d0, ds, dy, dy0, dys, dyn, x, xn, off, j0, m, steps): for
    k < KB and j < JB,
    dw[d0 + k*ds + j] += sum over n < m, p < steps*LANES of
                         dy[dy0 + n*dyn + k*dys + p] * x[n*xn + off[j0 + j] + p]."""
    @intrinsic
    def tile(typingctx, dw, d0, ds, dy, dy0, dys, dyn, x, xn, off, j0, m, steps):
        ip = types.intp
        sig = types.void(dw, ip, ip, dy, ip, ip, ip, x, ip, off, ip, ip, ip)

        def codegen(context, builder, sig, args):
            dwp, dyp, xp, op = _pointers(context, builder, sig, args, (0, 3, 7, 9))
            _, d0_, ds_, _, dy0_, dys_, dyn_, _, xn_, _, j0_, m_, steps_ = args
            fma = _fma(builder)
            offs = [builder.load(_at(builder, op, j0_, _const(j))) for j in range(JB)]

            def sample(b, n, acc):
                drow = b.add(dy0_, b.mul(n, dyn_))
                xbase = b.mul(n, xn_)

                def position(b, s, acc):
                    p = b.mul(s, _const(LANES))
                    dys = [_vload(b, _at(b, dyp, drow, b.mul(dys_, _const(k)), p)) for k in range(KB)]
                    out = []
                    for j in range(JB):
                        xv = _vload(b, _at(b, xp, xbase, offs[j], p))
                        out += [b.call(fma, [dys[k], xv, acc[j * KB + k]]) for k in range(KB)]
                    return out
                return _loop(b, steps_, acc, position)
            acc = _loop(builder, m_, [ir.Constant(_VEC, [0.0] * LANES)] * (KB * JB), sample)
            for j in range(JB):
                for k in range(KB):
                    ptr = _at(builder, dwp, d0_, builder.mul(ds_, _const(k)), _const(j))
                    total = _lanes_sum(builder, acc[j * KB + k])
                    builder.store(builder.fadd(builder.load(ptr), total), ptr)
            return context.get_dummy_value()
        return sig, codegen
    return tile


def _lanes_sum(builder, v):
    """The sum of a vector's lanes, pairwise (halves added until one lane is left)."""
    n = LANES
    while n > 1:
        n //= 2
        lo = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, n), list(range(n))))
        hi = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, n), list(range(n, 2 * n))))
        v = builder.fadd(lo, hi)
    return builder.extract_element(v, ir.Constant(_I32, 0))



@functools.lru_cache(maxsize=None)
def grad_tile_k(KV, JB):
    """grad_tile_k(dwt, d0, dT, t0, ts, x, x0, off, j0, P): for j < JB and the
    KV*LANES filters from t0, over positions p < P,
    dwt[d0 + j*ts + q] += sum_p dT[t0 + p*ts + q] * x[x0 + off[j0 + j] + p],
    q < KV*LANES: backward-filter vectorized over filters (dT is dy with
    positions as rows, ts filters a row; dwt is dw transposed, (taps, ts)).
    Per position KV loads of dT and JB broadcasts of x for KV*JB FMAs, no
    lanes to add at the end."""
    @intrinsic
    def tile(typingctx, dwt, d0, dT, t0, ts, x, x0, off, j0, P):
        ip = types.intp
        sig = types.void(dwt, ip, dT, ip, ip, x, ip, off, ip, ip)

        def codegen(context, builder, sig, args):
            wp, tp, xp, op = _pointers(context, builder, sig, args, (0, 2, 5, 7))
            _, d0_, _, t0_, ts_, _, x0_, _, j0_, P_ = args
            fma = _fma(builder)
            bases = [builder.add(x0_, builder.load(_at(builder, op, j0_, _const(j)))) for j in range(JB)]

            def position(b, p, acc):
                row = b.add(t0_, b.mul(p, ts_))
                dv = [_vload(b, _at(b, tp, row, _const(LANES * v))) for v in range(KV)]
                out = []
                for j in range(JB):
                    xs = _splat(b, b.load(_at(b, xp, bases[j], p)))
                    out += [b.call(fma, [xs, dv[v], acc[j * KV + v]]) for v in range(KV)]
                return out
            acc = _loop(builder, P_, [ir.Constant(_VEC, [0.0] * LANES)] * (KV * JB), position)
            for j in range(JB):
                for v in range(KV):
                    ptr = _at(builder, wp, d0_, builder.mul(ts_, _const(j)), _const(LANES * v))
                    _vstore(builder, builder.fadd(_vload(builder, ptr), acc[j * KV + v]), ptr)
            return context.get_dummy_value()
        return sig, codegen
    return tile


_LINE = 64 // 4   # float32 values per cache line


def _prefetch_intrinsic(write):
    """prefetch(a, i): ask for the cache line holding flat element i of the
    array a, to read (write=0) or to write (1, fetched for ownership) (a hint:
    no fault, no effect on results)."""
    @intrinsic
    def prefetch(typingctx, a, i):
        sig = types.void(a, types.intp)

        def codegen(context, builder, sig, args):
            (p,) = _pointers(context, builder, sig, args, (0,))
            i8p = ir.IntType(8).as_pointer()
            name = "llvm.prefetch.p0"
            fn = builder.module.globals.get(name) or ir.Function(
                builder.module, ir.FunctionType(ir.VoidType(), [i8p, _I32, _I32, _I32]), name)
            # keep in all cache levels (locality 3), data cache (1)
            builder.call(fn, [builder.bitcast(builder.gep(p, [args[1]]), i8p), ir.Constant(_I32, write),
                              ir.Constant(_I32, 3), ir.Constant(_I32, 1)])
            return context.get_dummy_value()
        return sig, codegen
    return prefetch


_prefetch_read, _prefetch_write = _prefetch_intrinsic(0), _prefetch_intrinsic(1)


@njit(inline="always")
def prefetch_run(a, start, count):
    """Prefetch the cache lines of a[start : start + count] (a flat float32 array)
    to read. For data read in many interleaved streams (e.g. the same channel
    plane of every sample of a block): more streams than the hardware
    prefetchers follow, so each small plane would otherwise be a cold miss."""
    for o in range(start, start + count, _LINE):
        _prefetch_read(a, o)
    _prefetch_read(a, start + count - 1)


@njit(inline="always")
def prefetch_run_write(a, start, count):
    """prefetch_run for a run about to be written (many interleaved write streams)."""
    for o in range(start, start + count, _LINE):
        _prefetch_write(a, o)
    _prefetch_write(a, start + count - 1)
