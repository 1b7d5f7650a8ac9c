"""CUDA backend of the fused clip-quantize-GEMM op (numba-cuda).

Public names for ``kernels/api.py`` (same signature as ``reference``/``cpu``):

* ``qgemm(x, weights, act, *, epilogue=None, mode="mixed", out=None)``
  -> float32 ``[M, N]`` (or uint8/int8 codes when ``epilogue.out_bits`` is set);
* ``qgemm_int32(x, weights, act)`` -> the int32 accumulators of integer mode
  (``sum_k (q_a - z_a)(q_w - z_w[n])``), for bit-exact tests;
* ``CudaQGemm(weights, act, *, epilogue=None, mode="mixed")``: the same op with
  every parameter array uploaded once (a callable "plan"; what layers and the
  benchmark use, since ``qgemm`` uploads the small parameter arrays per call).

Inputs: numpy arrays (copied to the device; the result comes back as numpy) or
device arrays (numba ``DeviceNDArray`` or anything with
``__cuda_array_interface__``, e.g. a CUDA torch tensor; the result stays on the
device and is a ``DeviceNDArray``). ``x`` must be float32, 2-D and C-contiguous
(no silent copy).

Kernels, defined at module level by small factories and compiled lazily (once per
specialisation and argument types) by numba:

``tiled32`` / ``tiled64`` / ``tiled128`` (any M)
    32 x 32 (2 x 2 outputs per thread), 64 x 64 (4 x 4) or 128 x 128 (8 x 8)
    output tile per 256-thread block, K-tiles of 16. Activations are read as
    float32 from global memory, clipped and quantized in registers with their
    input channel's scale / zero point / code range (staged in shared memory per
    K-tile) and stored to shared memory: integer mode stores the centred codes
    ``q_a - z_a`` (int32), mixed mode the dequantized value ``(q_a - z_k) s_k``
    (float32, so the inner loop is a plain FMA). Weights are read as int8 codes or
    packed nibbles, unpacked on load and stored centred (``q_w - z_w[n]``).
    Accumulation is int32 (integer mode) or float32 (mixed). 64-tiles are used
    when they make at least two blocks per SM, else 32-tiles; 128-tiles only when
    forced (slower on an H200). A launch with fewer blocks than SMs splits K over
    the grid's z dimension (partials in a scratch array that the plan allocates
    once, summed in fixed order by the ``splitk`` reduction kernel that also runs
    the epilogue).
``gemv`` (M <= 4, memory bound)
    8 warps x 8 output channels per block (4 for M > 2); the weights are read
    exactly once as 32-bit words, consecutive lanes on consecutive words (128 B
    per warp load), software-pipelined: the ``8 x U`` words of the next step are
    loaded (unconditionally, index clamped to the row) before the current step
    is computed, so the loads stay ahead of the arithmetic. The quantized
    activations of a K chunk are staged once per block in shared memory and
    reused by all its rows; each lane copies those of its words into registers
    once per step. Partial sums stay in registers over the whole K and are
    reduced across lanes through shared memory once (the simulator has no
    shuffles). Fields become floats without a conversion instruction: mixed mode
    reads each field in place with one LOP3 (``(word & mask) ^ (0x4B000000 |
    offset)`` as float is ``2**23 + field * 2**p``, the activation is staged
    pre-scaled by ``2**-p``, exact) and subtracts the weight zero point once per
    step as ``(offset + z_w) * sum(a)``.
    Used when a weight row is a whole number of words; otherwise the tiled kernel
    runs.

Epilogue (per output channel ``n``; identical in every backend):

* integer: ``y = f32(acc) * (s_a * s_w[n])`` (both products rounded to float32,
  the inner one first) ``+ bias[n]``;
* mixed:   ``y = acc * s_w[n] + bias[n]``;
* then ``relu``; then, with ``out_bits``, requantization with the same rule as
  the activations (:func:`aciq.kernels._scalar.quantize_code`).

On the GPU the epilogue multiplies with ``__fmul_rn`` so that NVVM cannot fuse
``* s_w + bias`` into one FMA (it would round once instead of twice and break
bit-equality of requantized codes with the CPU backends).
"""
from __future__ import annotations

import functools
import math

import numba
import numpy as np
from numba import cuda
from numba.cuda.cudadrv import devicearray as _devicearray

from ._scalar import qrange, quantize_code
from .packing import NIBBLE_OFFSET
from .spec import check_x

__all__ = ["qgemm", "qgemm_int32", "CudaQGemm", "TILE", "GEMV_MAX_M"]

_SIM = bool(numba.config.ENABLE_CUDASIM)

# --------------------------------------------------------------------- tiles
BM = 64
BN = 64
BK = 16
TM = 4
TN = 4
TX = BN // TN  # 16 threads along n
TY = BM // TM  # 16 threads along m
NTHREADS = TX * TY  # 256
TILE = (BM, BN, BK)
# (BM, BN, TM, TN) per tile config; every config runs 16 x 16 = 256 threads per block
TILES = {"tiled32": (32, 32, 2, 2), "tiled64": (64, 64, 4, 4), "tiled128": (128, 128, 8, 8)}
TILE_NAMES = tuple(TILES)

GEMV_MAX_M = 4
GEMV_WARPS = 8
GEMV_SMEM_WORDS = 6144  # float32/int32 words of staged activations per block


def _gemv_rpw(mrows):
    """Rows (output channels) per warp: 8 for M <= 2 (64 rows per block), else 4."""
    return 8 if mrows <= 2 else 4


def _gemv_rows(mrows):
    """Output channels per GEMV block."""
    return GEMV_WARPS * _gemv_rpw(mrows)


GEMV_ROWS = _gemv_rows(1)  # 64 rows per block at M = 1
_OUT_FLOAT, _OUT_CODE, _OUT_ACC, _OUT_PARTIAL = 0, 1, 2, 3
PAD = 1  # shared-memory row padding (bank conflicts of the transposed tile stores)

if _SIM:

    @numba.njit(inline="always")
    def _fmul_rn(a, b):
        return np.float32(np.float32(a) * np.float32(b))

else:
    from numba.cuda import libdevice as _libdevice

    _fmul_rn = _libdevice.fmul_rn

if _SIM:

    @numba.njit(inline="always")
    def _bits_float(bits):
        """The float32 with bit pattern ``bits = 0x4B000000 | mantissa`` (``2**23 + mantissa``)."""
        return np.float32(np.float32(np.int32(bits) & np.int32(0x7FFFFF)) + np.float32(8388608.0))

else:

    @numba.njit(inline="always")
    def _bits_float(bits):
        """The float32 with bit pattern ``bits`` (no instruction)."""
        return _libdevice.int_as_float(np.int32(bits))


@numba.njit(inline="always")
def _epilogue_value(acc, integer, scale_a, scale_w, bias, relu):
    """Float32 output of one accumulator (see the module docstring)."""
    if integer:
        y = _fmul_rn(np.float32(acc), _fmul_rn(np.float32(scale_a), np.float32(scale_w)))
    else:
        y = _fmul_rn(np.float32(acc), np.float32(scale_w))
    y = np.float32(y + np.float32(bias))
    if relu and y < np.float32(0.0):
        y = np.float32(0.0)
    return y


# ------------------------------------------------------------ tiled kernel
@functools.lru_cache(maxsize=None)
def _tiled_kernel(integer, packed, out_kind, tile="tiled64"):
    """The tiled fused kernel specialised on (mode, weight layout, output kind, tile config).

    ``tile``: ``"tiled32"`` (32 x 32 tile, 2 x 2 outputs per thread: more blocks for
    small outputs), ``"tiled64"`` (64 x 64, 4 x 4) or ``"tiled128"`` (128 x 128,
    8 x 8; only when forced). ``True`` / ``False`` are accepted for ``"tiled128"`` /
    ``"tiled64"``.
    """
    if isinstance(tile, bool):
        tile = "tiled128" if tile else "tiled64"
    bm, bn, tm, tn = TILES[tile]
    txn, tyn = bn // tn, bm // tm  # 16 x 16 threads either way
    bmp, bnp = bm + PAD, bn + PAD
    sdt = numba.int32 if integer else numba.float32
    adt = numba.int32 if integer else numba.float32
    half_bk = BK // 2

    def kernel(x, wq, a_scale, a_zp, a_lo, a_hi, w_zp, w_scale, w_off,
               bias, relu, o_scale, o_zp, o_lo, o_hi, k_split, out):
        M = np.int32(x.shape[0])
        N = np.int32(w_zp.shape[0])
        # split-K: block z reduces k in [kb, K) (k_split is a multiple of BK)
        kb = np.int32(np.int32(cuda.blockIdx.z) * np.int32(k_split))
        K = np.int32(min(np.int32(x.shape[1]), np.int32(kb + np.int32(k_split))))
        sA = cuda.shared.array((BK, bmp), sdt)
        sB = cuda.shared.array((BK, bnp), sdt)
        sS = cuda.shared.array(BK, numba.float32)
        sZ = cuda.shared.array(BK, numba.int32)
        sL = cuda.shared.array(BK, numba.int32)
        sH = cuda.shared.array(BK, numba.int32)
        tx = np.int32(cuda.threadIdx.x)
        ty = np.int32(cuda.threadIdx.y)
        tid = np.int32(ty * np.int32(txn) + tx)
        m0 = np.int32(np.int32(cuda.blockIdx.y) * np.int32(bm))
        n0 = np.int32(np.int32(cuda.blockIdx.x) * np.int32(bn))
        acc = cuda.local.array((tm, tn), adt)
        for i in range(tm):
            for j in range(tn):
                acc[i, j] = adt(0)
        a_reg = cuda.local.array(tm, sdt)
        b_reg = cuda.local.array(tn, sdt)
        for k0 in range(kb, K, np.int32(BK)):
            k0 = np.int32(k0)
            if tid < np.int32(BK):
                gk = np.int32(k0 + tid)
                if gk < K:
                    sS[tid] = a_scale[gk]
                    sZ[tid] = np.int32(a_zp[gk])
                    sL[tid] = np.int32(a_lo[gk])
                    sH[tid] = np.int32(a_hi[gk])
                else:
                    sS[tid] = np.float32(1.0)
                    sZ[tid] = np.int32(0)
                    sL[tid] = np.int32(0)
                    sH[tid] = np.int32(0)
            cuda.syncthreads()
            # activations: load float32, quantize in registers, store codes
            for r in range(bm * BK // NTHREADS):
                idx = np.int32(tid + np.int32(r * NTHREADS))
                mm = np.int32(idx // np.int32(BK))
                kk = np.int32(idx % np.int32(BK))
                gm = np.int32(m0 + mm)
                gk = np.int32(k0 + kk)
                if gm < M and gk < K:
                    z = sZ[kk]
                    q = quantize_code(x[gm, gk], sS[kk], z, sL[kk], sH[kk])
                    if integer:
                        sA[kk, mm] = np.int32(q - z)
                    else:
                        sA[kk, mm] = np.float32(np.float32(np.int32(q - z)) * sS[kk])
                else:
                    sA[kk, mm] = sdt(0)
            # weights: int8 codes or packed nibbles, centred on load
            if packed:
                for r in range(bn * half_bk // NTHREADS):
                    idx = np.int32(tid + np.int32(r * NTHREADS))
                    nn = np.int32(idx // np.int32(half_bk))
                    kb = np.int32(idx % np.int32(half_bk))
                    gn = np.int32(n0 + nn)
                    gk = np.int32(k0 + np.int32(2) * kb)
                    lo_v = np.int32(0)
                    hi_v = np.int32(0)
                    if gn < N and gk < K:
                        byte = np.int32(wq[gn, np.int32(gk // np.int32(2))])
                        z = np.int32(np.int32(w_zp[gn]) + np.int32(w_off))
                        lo_v = np.int32(np.int32(byte & np.int32(15)) - z)
                        if gk + np.int32(1) < K:
                            hi_v = np.int32(np.int32(np.int32(byte >> np.int32(4)) & np.int32(15)) - z)
                    sB[np.int32(2) * kb, nn] = sdt(lo_v)
                    sB[np.int32(2) * kb + np.int32(1), nn] = sdt(hi_v)
            else:
                for r in range(bn * BK // NTHREADS):
                    idx = np.int32(tid + np.int32(r * NTHREADS))
                    nn = np.int32(idx // np.int32(BK))
                    kk = np.int32(idx % np.int32(BK))
                    gn = np.int32(n0 + nn)
                    gk = np.int32(k0 + kk)
                    v = np.int32(0)
                    if gn < N and gk < K:
                        v = np.int32(np.int32(wq[gn, gk]) - np.int32(w_zp[gn]))
                    sB[kk, nn] = sdt(v)
            cuda.syncthreads()
            for kk in range(BK):
                for i in range(tm):
                    a_reg[i] = sA[kk, ty + np.int32(i * tyn)]
                for j in range(tn):
                    b_reg[j] = sB[kk, tx + np.int32(j * txn)]
                for i in range(tm):
                    for j in range(tn):
                        if integer:
                            acc[i, j] = np.int32(acc[i, j] + np.int32(np.int32(a_reg[i]) * np.int32(b_reg[j])))
                        else:
                            acc[i, j] = acc[i, j] + a_reg[i] * b_reg[j]
            cuda.syncthreads()
        s_a = a_scale[0]
        if out_kind == _OUT_CODE:
            # two passes, so that the loop reading acc stays small enough to be fully
            # unrolled (acc must only ever be indexed by constants to live in registers)
            yv = cuda.local.array((tm, tn), numba.float32)
            for i in range(tm):
                for j in range(tn):
                    gn = np.int32(n0 + tx + np.int32(j * txn))
                    y = np.float32(0.0)
                    if gn < N:
                        y = _epilogue_value(acc[i, j], integer, s_a, w_scale[gn], bias[gn], relu)
                    yv[i, j] = y
            for i in range(tm):
                gm = np.int32(m0 + ty + np.int32(i * tyn))
                if gm < M:
                    for j in range(tn):
                        gn = np.int32(n0 + tx + np.int32(j * txn))
                        if gn < N:
                            out[gm, gn] = quantize_code(yv[i, j], o_scale, o_zp, o_lo, o_hi)
        else:
            for i in range(tm):
                gm = np.int32(m0 + ty + np.int32(i * tyn))
                if gm < M:
                    for j in range(tn):
                        gn = np.int32(n0 + tx + np.int32(j * txn))
                        if gn < N:
                            if out_kind == _OUT_PARTIAL:
                                out[cuda.blockIdx.z, gm, gn] = acc[i, j]
                            elif out_kind == _OUT_ACC:
                                out[gm, gn] = acc[i, j]
                            else:
                                out[gm, gn] = _epilogue_value(acc[i, j], integer, s_a, w_scale[gn],
                                                              bias[gn], relu)

    return cuda.jit(kernel)


@functools.lru_cache(maxsize=None)
def _splitk_reduce_kernel(integer, out_kind):
    """Sum the split-K partials ``part[z, m, n]`` in fixed order, then the epilogue."""
    adt = numba.int32 if integer else numba.float32

    def kernel(part, a_scale, w_scale, bias, relu, o_scale, o_zp, o_lo, o_hi, out):
        S = np.int32(part.shape[0])
        M = np.int32(part.shape[1])
        N = np.int32(part.shape[2])
        idx = np.int32(cuda.grid(1))
        if idx < M * N:
            m = np.int32(idx // N)
            n = np.int32(idx % N)
            s = adt(0)
            for z in range(S):
                if integer:
                    s = np.int32(s + np.int32(part[z, m, n]))
                else:
                    s = s + part[z, m, n]
            if out_kind == _OUT_ACC:
                out[m, n] = s
            else:
                y = _epilogue_value(s, integer, a_scale[0], w_scale[n], bias[n], relu)
                if out_kind == _OUT_CODE:
                    out[m, n] = quantize_code(y, o_scale, o_zp, o_lo, o_hi)
                else:
                    out[m, n] = y

    return cuda.jit(kernel)


# ------------------------------------------------------------- GEMV kernel
GEMV_STEP_WORDS = 16  # weight words per lane and warp step (all rows), double-buffered


def _gemv_unroll(mrows, per_word):
    """32-bit words per lane, row and warp step.

    ``rpw * U <= GEMV_STEP_WORDS`` words in flight per buffer and at most 32 staged
    activations per lane in registers (``U * per_word * M <= 32``).
    """
    return max(1, min(GEMV_STEP_WORDS // _gemv_rpw(mrows), 32 // (per_word * mrows)))


@functools.lru_cache(maxsize=None)
def _gemv_kernel(integer, packed, out_kind, mrows):
    """Small-M (``M == mrows <= 4``) kernel reading 32-bit weight words once.

    Block = 8 warps x ``rpw`` output rows each (``rpw = 8`` for M <= 2, else 4).
    Per K chunk the block stages the centred (integer) or dequantized (mixed)
    activation codes once in shared memory (quantized once per block and reused
    by all its rows); each warp then walks K in steps of ``32 * U`` words:
    consecutive lanes read consecutive words (128 B per warp load). The weight
    words are software-pipelined: the ``rpw * U`` words of step ``s + 1`` are
    loaded into a second register buffer before step ``s`` is computed (and
    before a chunk is staged), so that a full step of arithmetic (and the
    staging) covers the memory latency; without this ptxas interleaves the loads
    with the arithmetic and each warp waits on DRAM several times per step.
    Every lane copies the activations of its ``U`` words into registers once per
    step and reuses them for all its rows. Partial sums stay in registers for the
    whole K and are reduced across lanes through shared memory once at the end.
    Mixed mode turns a field into a float without a conversion instruction and
    without a shift: one LOP3 gives ``bits = (word & (mask << p)) ^ (0x4B000000 |
    xor << p)`` (``p <= 19``; fields past bit 19 come from ``word >> 12`` or
    ``>> 16``), ``int_as_float(bits) - 2**23 == field * 2**p`` exactly, and the
    activation was staged times ``2**-p`` (exact), so each product is the exact
    ``a * field`` rounded once; the zero point is subtracted once per step as
    ``(offset + z_w) * sum(a)``. Integer mode multiplies the raw field and
    subtracts ``(offset + z_w) * sum(a)`` once at the end (every per-lane term is
    far below 2**31). Rows beyond N read row ``N - 1`` (clamped, never
    stored) and word indices past the row end read its last word (their staged
    activations are zero), so the weight loads are unconditional.
    """
    sdt = numba.int32 if integer else numba.float32
    per_word = 8 if packed else 4  # codes per 32-bit word
    fbits = 4 if packed else 8
    fmask = 15 if packed else 255
    fxor = 0 if packed else 128  # int8 byte b -> field b ^ 128 = code + 128
    rpw = _gemv_rpw(mrows)
    rows = GEMV_WARPS * rpw
    unroll = _gemv_unroll(mrows, per_word)
    step = 32 * unroll
    nx = unroll * per_word * mrows  # activations per lane held in registers
    chunk_words = (GEMV_SMEM_WORDS // (mrows * per_word)) // step * step
    chunk_k = chunk_words * per_word
    nthreads = GEMV_WARPS * 32
    stage_iters = -(-chunk_k // nthreads)
    racc = rows * mrows
    nacc = rpw * mrows
    nwv = rpw * unroll
    # mixed mode: field j is read in place at bit position fbits * p_j of the word
    # (j < jsplit) or of word >> hishift (p_j = j - jdrop), never above bit 19
    jsplit = 5 if packed else 2
    jdrop = 3 if packed else 2
    hishift = fbits * jdrop
    SB = min(stage_iters, 6)  # staging batch (elements per thread with loads in flight)
    sbm = SB * mrows

    def kernel(x, ww, a_scale, a_zp, a_lo, a_hi, w_zp, w_scale, w_off,
               bias, relu, o_scale, o_zp, o_lo, o_hi, out):
        K = np.int32(x.shape[1])
        N = np.int32(out.shape[1])
        n_words = np.int32(ww.shape[1])
        # sX[m, j, w] = a_hat[m, k = (c0 + w) * per_word + j]   (conflict-free per lane)
        sX = cuda.shared.array((mrows, per_word, chunk_words), sdt)
        sP = cuda.shared.array((racc, 33), sdt)
        tid = np.int32(cuda.threadIdx.x)
        warp = np.int32(tid // np.int32(32))
        lane = np.int32(tid % np.int32(32))
        row0 = np.int32(np.int32(cuda.blockIdx.x) * np.int32(rows))
        xr = cuda.local.array(nx, sdt)
        sx = cuda.local.array(mrows, sdt)
        acc = cuda.local.array(nacc, sdt)
        wv = cuda.local.array(nwv, numba.uint32)  # words of the current step
        wn = cuda.local.array(nwv, numba.uint32)  # words of the next step (in flight)
        fbr = cuda.local.array(rpw, numba.float32)
        zor = cuda.local.array(rpw, numba.int32)
        nr = cuda.local.array(rpw, numba.int32)
        bx = cuda.local.array(sbm, numba.float32)
        bs = cuda.local.array(SB, numba.float32)
        bz = cuda.local.array(SB, numba.int32)
        bl = cuda.local.array(SB, numba.int32)
        bh = cuda.local.array(SB, numba.int32)
        for i in range(nacc):
            acc[i] = sdt(0)
        for m in range(mrows):
            sx[m] = sdt(0)
        for r in range(rpw):
            n = np.int32(row0 + warp + np.int32(r * GEMV_WARPS))
            zo = np.int32(0)
            if n < N:
                zo = np.int32(np.int32(w_zp[n]) + np.int32(w_off))
            zor[r] = zo
            fbr[r] = np.float32(zo)  # exact
            nr[r] = min(n, np.int32(N - np.int32(1)))  # clamped row to read
        # prefetch the first step; word indices are clamped to the row (unconditional
        # loads, which ptxas keeps ahead of the arithmetic): a word past the row end
        # meets staged zero activations (k >= K), so it adds exactly 0
        wlast = np.int32(n_words - np.int32(1))
        for u in range(unroll):
            wu = min(np.int32(lane + np.int32(u * 32)), wlast)
            for r in range(rpw):
                wn[r * unroll + u] = ww[nr[r], wu]
        # 0x4B000000 in a register (n_words < 2**31): with two immediates the
        # mask-and-or below takes two LOP3 instead of one
        magic = np.int32(np.int32(0x4B000000) | np.int32(n_words >> np.int32(31)))
        c0 = np.int32(0)
        for s0 in range(np.int32(0), n_words, np.int32(step)):
            s0 = np.int32(s0)
            if s0 == np.int32(0) or np.int32(s0 - c0) == np.int32(chunk_words):
                # stage the quantized activations of the chunk starting at s0 (once per block)
                c0 = s0
                cuda.syncthreads()  # every warp is done with the previous chunk
                # batches of SB elements per thread: every load of a batch first (index
                # clamped to K - 1, unconditional), so they are in flight together
                for it0 in range(0, stage_iters, SB):
                    for b in range(SB):
                        gk = min(np.int32(np.int32(c0 * np.int32(per_word)) + tid
                                          + np.int32((it0 + b) * nthreads)), np.int32(K - np.int32(1)))
                        for m in range(mrows):
                            bx[b * mrows + m] = x[m, gk]
                        bs[b] = a_scale[gk]
                        bz[b] = a_zp[gk]
                        bl[b] = a_lo[gk]
                        bh[b] = a_hi[gk]
                    for b in range(SB):
                        e = np.int32(tid + np.int32((it0 + b) * nthreads))
                        if it0 + b < stage_iters and e < np.int32(chunk_k):
                            w = np.int32(e // np.int32(per_word))
                            j = np.int32(e % np.int32(per_word))
                            gk = np.int32(np.int32(c0 * np.int32(per_word)) + e)
                            z = np.int32(bz[b])
                            s_k = bs[b]
                            for m in range(mrows):
                                if gk < K:
                                    q = quantize_code(bx[b * mrows + m], s_k, z, np.int32(bl[b]), np.int32(bh[b]))
                                    if integer:
                                        sX[m, j, w] = np.int32(q - z)
                                    else:  # pre-scaled by 2**-(fbits p_j) (exact)
                                        pj = np.int32(j - (np.int32(jdrop) if j >= np.int32(jsplit) else np.int32(0)))
                                        p2 = np.float32(np.float32(1.0) / np.float32(
                                            np.int32(1) << np.int32(fbits * pj)))
                                        sX[m, j, w] = np.float32(np.float32(np.float32(np.int32(q - z)) * s_k) * p2)
                                else:
                                    sX[m, j, w] = sdt(0)
                cuda.syncthreads()
            # take the words of this step, start the loads of the next one
            for i in range(nwv):
                wv[i] = wn[i]
            s1 = np.int32(s0 + np.int32(step))
            for u in range(unroll):
                wu = min(np.int32(s1 + lane + np.int32(u * 32)), wlast)
                for r in range(rpw):
                    wn[r * unroll + u] = ww[nr[r], wu]
            # this lane's activations for words s0 + lane + 32 u, into registers
            for u in range(unroll):
                wl = np.int32(np.int32(s0 - c0) + lane + np.int32(u * 32))
                for j in range(per_word):
                    for m in range(mrows):
                        v = sX[m, j, wl]  # zero beyond K (staged), wl < chunk_words
                        xr[(u * per_word + j) * mrows + m] = v
                        if integer:
                            sx[m] = np.int32(sx[m] + v)
            if not integer:
                # sum of this step's activations (unscaled, exact powers of 2)
                for m in range(mrows):
                    sx[m] = sdt(0)
                for u in range(unroll):
                    for j in range(per_word):
                        pj = j - jdrop if j >= jsplit else j
                        for m in range(mrows):
                            sx[m] = sx[m] + xr[(u * per_word + j) * mrows + m] * np.float32(
                                np.int32(1) << np.int32(fbits * pj))
            for r in range(rpw):
                if not integer:  # zero-point term of this step: - (offset + z_w) * sum(a)
                    for m in range(mrows):
                        acc[r * mrows + m] = acc[r * mrows + m] - fbr[r] * sx[m]
                for u in range(unroll):
                    word = wv[r * unroll + u]
                    if integer:
                        for j in range(per_word):
                            f = np.int32(np.int32(np.uint32(word >> np.uint32(fbits * j))
                                                  & np.uint32(fmask)) ^ np.int32(fxor))
                            for m in range(mrows):
                                acc[r * mrows + m] = np.int32(acc[r * mrows + m] + np.int32(
                                    xr[(u * per_word + j) * mrows + m] * f))
                    else:
                        whi = np.uint32(word >> np.uint32(hishift))
                        for j in range(per_word):
                            pj = j - jdrop if j >= jsplit else j
                            src = whi if j >= jsplit else word
                            # one LOP3: field in place, xor offset, exponent of 2**23
                            bits = np.int32(np.int32(src & np.uint32(fmask << (fbits * pj)))
                                            ^ np.int32(magic | np.int32(fxor << (fbits * pj))))
                            cw = np.float32(_bits_float(bits) - np.float32(8388608.0))  # field * 2**(fbits p_j)
                            for m in range(mrows):
                                acc[r * mrows + m] = acc[r * mrows + m] + \
                                    xr[(u * per_word + j) * mrows + m] * cw
        cuda.syncthreads()
        # lane partials -> shared memory -> one sum per (row, m)
        for r in range(rpw):
            rl = np.int32(warp + np.int32(r * GEMV_WARPS))
            for m in range(mrows):
                if integer:
                    sP[np.int32(rl * np.int32(mrows) + np.int32(m)), lane] = np.int32(
                        acc[r * mrows + m] - np.int32(zor[r] * sx[m]))
                else:
                    sP[np.int32(rl * np.int32(mrows) + np.int32(m)), lane] = acc[r * mrows + m]
        cuda.syncthreads()
        if tid < np.int32(racc):
            rl = np.int32(tid // np.int32(mrows))
            m = np.int32(tid % np.int32(mrows))
            n = np.int32(row0 + rl)
            if n < N:
                s = sdt(0)
                for l in range(32):
                    if integer:
                        s = np.int32(s + np.int32(sP[tid, l]))
                    else:
                        s = s + sP[tid, l]
                if out_kind == _OUT_ACC:
                    out[m, n] = s
                else:
                    y = _epilogue_value(s, integer, a_scale[0], w_scale[n], bias[n], relu)
                    if out_kind == _OUT_CODE:
                        out[m, n] = quantize_code(y, o_scale, o_zp, o_lo, o_hi)
                    else:
                        out[m, n] = y

    return cuda.jit(kernel)


# ------------------------------------------------------------------- host
_MODES = ("integer", "mixed")


def _sm_count():
    """Multiprocessors of the current GPU (4 under the simulator)."""
    if _SIM:
        return 4
    try:
        return int(cuda.get_current_device().MULTIPROCESSOR_COUNT)
    except Exception:  # pragma: no cover - no usable device
        return 132


def _is_device(a):
    """True for numba device arrays and anything with ``__cuda_array_interface__``."""
    return _devicearray.is_cuda_ndarray(a) or hasattr(a, "__cuda_array_interface__")


def _as_device(a):
    """A numba device array viewing ``a`` (no copy)."""
    return a if _devicearray.is_cuda_ndarray(a) else cuda.as_cuda_array(a)


def _as_device_x(x, k):
    """(device array, came_from_host) for ``x``: float32, 2-D, C-contiguous, K columns."""
    if not _is_device(x):
        x = np.asarray(x)
    check_x(x, k)  # same checks and messages as the other backends; never copies
    if _is_device(x):
        return _as_device(x), False
    return cuda.to_device(x), True


def _host(a, name, dtype, size=None):
    h = np.ascontiguousarray(np.asarray(a), dtype=dtype).reshape(-1)
    if size is not None and h.size != size:
        raise ValueError(f"{name} must have {size} entries, got {h.size}")
    return h


def _weight_codes(weights):
    """Host or device codes of ``weights`` and the nibble offset (packed)."""
    codes = weights.codes
    packed = bool(weights.packed)
    if packed:
        offset = NIBBLE_OFFSET
    else:
        offset = 0
    return codes, packed, offset


class CudaQGemm:
    """The fused op with its parameters uploaded to the device once.

    ``CudaQGemm(weights, act, epilogue=None, mode="mixed")(x)`` equals
    ``qgemm(x, weights, act, epilogue=epilogue, mode=mode)``; see the module
    docstring for the kernels and the epilogue.

    Parameters
    ----------
    weights : QuantWeights
        ``codes`` int8 ``[N, K]`` or packed uint8 ``[N, ceil(K/2)]``, per output
        channel ``scale`` and ``zero_point``.
    act : ActQuant
        Per input channel ``scale``, ``zero_point``, ``bits`` and ``signed``.
    epilogue : Epilogue or None
        Bias, ReLU and optional requantization of the output.
    mode : {"mixed", "integer"}
        ``integer`` needs one activation scale and zero point for all k.
    split_k : int, optional
        Force the split-K factor of the tiled kernels (default: automatic).
    tile : {None, "tiled32", "tiled64", "tiled128"}
        Force a tiled kernel (default: automatic, ``gemv`` for M <= 4).
    """

    def __init__(self, weights, act, *, epilogue=None, mode="mixed", split_k=None, tile=None):
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        self.mode = mode
        self.integer = mode == "integer"
        if split_k is not None and (isinstance(split_k, bool) or int(split_k) != split_k or split_k < 1):
            raise ValueError(f"split_k must be None or a positive integer, got {split_k!r}")
        self.split_k = split_k
        if tile not in (None,) + TILE_NAMES:
            raise ValueError(f"tile must be None or one of {TILE_NAMES}, got {tile!r}")
        self.tile = tile
        self._part, self._part_key = None, None
        self._sms = _sm_count()
        k = int(weights.k)
        n = int(weights.n)
        if k < 1 or n < 1:
            raise ValueError(f"weights must have K >= 1 and N >= 1, got K={k}, N={n}")
        self.k, self.n = k, n
        codes, packed, offset = _weight_codes(weights)
        self.packed = packed
        self.offset = offset
        a_scale = _host(act.scale, "act.scale", np.float32, k)
        a_zp = _host(act.zero_point, "act.zero_point", np.int32, k)
        a_bits = _host(act.bits, "act.bits", np.int32, k)
        if np.any((a_bits < 1) | (a_bits > 8)):
            raise ValueError("act.bits must be in 1..8")
        if not np.all(np.isfinite(a_scale)) or np.any(a_scale <= 0):
            raise ValueError("act.scale must be finite and > 0")
        signed = bool(act.signed)
        if signed:
            a_lo = -(np.int32(1) << (a_bits - 1))
            a_hi = (np.int32(1) << (a_bits - 1)) - 1
        else:
            a_lo = np.zeros(k, np.int32)
            a_hi = (np.int32(1) << a_bits) - 1
        if np.any((a_zp < a_lo) | (a_zp > a_hi)):
            raise ValueError("act.zero_point must lie in each channel's code range")
        if self.integer:
            if np.any(a_scale != a_scale[0]) or np.any(a_zp != a_zp[0]):
                raise ValueError(
                    "act: mode='integer' needs a per-tensor activation scale and zero point "
                    "(use mode='mixed' for per-channel scales)")
            w_max = max(abs(-(1 << (int(weights.bits) - 1)) - int(z)) for z in (np.min(weights.zero_point),
                                                                             np.max(weights.zero_point)))
            w_max = max(w_max, max(abs((1 << (int(weights.bits) - 1)) - 1 - int(z))
                                   for z in (np.min(weights.zero_point), np.max(weights.zero_point))))
            a_max = int(max(np.max(np.abs(a_lo - a_zp)), np.max(np.abs(a_hi - a_zp))))
            kmax = (2**31 - 1) // max(a_max * w_max, 1)
            if k > kmax:
                raise ValueError(f"K={k} may overflow the int32 accumulator in mode='integer' "
                                 f"(K must be <= {kmax} for these bit widths)")
        w_scale = _host(weights.scale, "weights.scale", np.float32, n)
        w_zp = _host(weights.zero_point, "weights.zero_point", np.int32, n)
        shape = tuple(codes.shape)
        want = (n, (k + 1) // 2) if packed else (n, k)
        if shape != want:
            raise ValueError(f"weights.codes must have shape {want}, got {shape}")
        dt = np.dtype(codes.dtype)
        if dt != (np.uint8 if packed else np.int8):
            raise ValueError(f"weights.codes must be {'uint8 (packed)' if packed else 'int8'}, got {dt}")
        wq = _as_device(codes) if _is_device(codes) else cuda.to_device(np.ascontiguousarray(codes))
        if not wq.is_c_contiguous():
            raise ValueError("weights.codes must be C-contiguous")
        self._wq = wq
        # 32-bit word view for the GEMV path (rows must be whole, aligned words)
        row_bytes = shape[1]
        ptr = wq.__cuda_array_interface__["data"][0] if not _SIM else 0
        self._ww = wq.view(np.uint32) if (row_bytes % 4 == 0 and ptr % 4 == 0 and row_bytes > 0) else None
        ep = epilogue
        bias = getattr(ep, "bias", None) if ep is not None else None
        bias_h = np.zeros(n, np.float32) if bias is None else _host(bias, "epilogue.bias", np.float32, n)
        self.relu = bool(getattr(ep, "relu", False)) if ep is not None else False
        out_bits = getattr(ep, "out_bits", None) if ep is not None else None
        self.out_bits = None if out_bits is None else int(out_bits)
        if self.out_bits is not None:
            if not 1 <= self.out_bits <= 8:
                raise ValueError(f"epilogue.out_bits must be in 1..8, got {out_bits}")
            self.out_signed = bool(ep.out_signed)
            lo, hi = qrange(self.out_bits, self.out_signed)
            self._o = (np.float32(ep.out_scale), np.int32(ep.out_zero_point), np.int32(lo), np.int32(hi))
            self.out_dtype = np.dtype(np.int8 if self.out_signed else np.uint8)
        else:
            self.out_signed = False
            self._o = (np.float32(1.0), np.int32(0), np.int32(0), np.int32(0))
            self.out_dtype = np.dtype(np.float32)
        self._a = tuple(cuda.to_device(v) for v in (a_scale, a_zp, a_lo.astype(np.int32), a_hi.astype(np.int32)))
        self._w = (cuda.to_device(w_zp), cuda.to_device(w_scale), np.int32(offset))
        # the small-M kernel reads int8 codes as fields byte ^ 128 = code + 128
        self._w_gemv = self._w[:2] + (np.int32(offset if packed else 128),)
        self._bias = cuda.to_device(bias_h)

    def kernel_for(self, m):
        """``(path, splits, k_split)`` for ``M = m``.

        ``path`` is ``"gemv"`` (``m <= 4`` and weight rows of whole 32-bit words),
        else ``"tiled64"``. ``"tiled32"`` and ``"tiled128"`` only when forced
        (``tile=``): on an H200 (benchmarks/results/gpu-h200-run1/2) tiled64 beat
        tiled128 on every ResNet-50 shape, and beat tiled32 on all but one (a 1x1
        64->64 layer at batch 1), small under-filled grids included, once split-K
        fills the SMs. A launch with fewer tiles than SMs splits K over
        ``splits = min(ceil(2 SMs / tiles), ceil(K / 128))`` blocks of ``k_split``
        (a multiple of the K-tile) whose partials a second small kernel reduces in
        fixed order (into a scratch buffer the plan keeps).
        """
        if 1 <= m <= GEMV_MAX_M and self._ww is not None and self.tile is None:
            return "gemv", 1, self.k
        if self.tile is not None:
            path = self.tile
        else:
            path = "tiled64"
        bm, bn = TILES[path][:2]
        if self.split_k is not None:
            splits = int(self.split_k)
        else:
            tiles = math.ceil(self.n / bn) * math.ceil(m / bm)
            splits = 1
            if tiles < self._sms:
                splits = max(1, min(math.ceil(2 * self._sms / tiles), math.ceil(self.k / (8 * BK))))
        k_split = math.ceil(math.ceil(self.k / max(splits, 1)) / BK) * BK
        splits = math.ceil(self.k / k_split)
        return path, splits, (k_split if splits > 1 else self.k)

    def _partials(self, splits, m):
        """The split-K scratch ``[splits, m, n]``, allocated once per shape and reused.

        A per-call ``cuda.device_array`` here cost ~0.6 ms per call on an H200
        (allocation / deferred frees synchronise the device).
        """
        key = (splits, m)
        if self._part_key != key:
            self._part = cuda.device_array((splits, m, self.n), np.int32 if self.integer else np.float32)
            self._part_key = key
        return self._part

    def __call__(self, x, *, out=None, accumulator=False):
        """Run the op on ``x`` float32 ``[M, K]``; see :func:`qgemm`.

        ``accumulator=True`` (integer mode) returns the int32 accumulators instead.
        No host round trip and no device allocation on the hot path when ``x`` and
        ``out`` are device arrays (the split-K scratch is kept by the plan, so one
        plan must not be called concurrently from several streams/threads).
        """
        if accumulator and not self.integer:
            raise ValueError("mode: accumulators are only defined for mode='integer'")
        xd, on_host = _as_device_x(x, self.k)
        m = xd.shape[0]
        dtype = np.dtype(np.int32) if accumulator else self.out_dtype
        od = self._out(out, (m, self.n), dtype)
        kind = _OUT_ACC if accumulator else (_OUT_CODE if self.out_bits is not None else _OUT_FLOAT)
        path, splits, k_split = self.kernel_for(m)
        k_split = np.int32(k_split)
        if path == "gemv":
            kern = _gemv_kernel(self.integer, self.packed, kind, m)
            kern[(math.ceil(self.n / _gemv_rows(m)),), (GEMV_WARPS * 32,)](
                xd, self._ww, *self._a, *self._w_gemv, self._bias, self.relu, *self._o, od)
        else:
            bm, bn = TILES[path][:2]
            grid = (math.ceil(self.n / bn), math.ceil(m / bm), splits)
            if splits == 1:
                kern = _tiled_kernel(self.integer, self.packed, kind, path)
                kern[grid, (TX, TY)](xd, self._wq, *self._a, *self._w, self._bias, self.relu,
                                     *self._o, k_split, od)
            else:
                part = self._partials(splits, m)
                kern = _tiled_kernel(self.integer, self.packed, _OUT_PARTIAL, path)
                kern[grid, (TX, TY)](xd, self._wq, *self._a, *self._w, self._bias, self.relu,
                                     *self._o, k_split, part)
                red = _splitk_reduce_kernel(self.integer, kind)
                red[(math.ceil(m * self.n / 256),), (256,)](
                    part, self._a[0], self._w[1], self._bias, self.relu, *self._o, od)
        if on_host:
            res = od.copy_to_host()
            if out is not None and not _is_device(out):
                out[...] = res
                return out
            return res
        return od

    @staticmethod
    def _out(out, shape, dtype):
        if out is None:
            return cuda.device_array(shape, dtype=dtype)
        if tuple(out.shape) != shape:
            raise ValueError(f"out must have shape {shape}, got {tuple(out.shape)}")
        if np.dtype(out.dtype) != dtype:
            raise ValueError(f"out must be {dtype}, got {np.dtype(out.dtype)}")
        if _is_device(out):
            od = _as_device(out)
            if not od.is_c_contiguous():
                raise ValueError("out must be C-contiguous")
            return od
        if not np.asarray(out).flags.c_contiguous:
            raise ValueError("out must be C-contiguous")
        return cuda.device_array(shape, dtype=dtype)


def qgemm(x, weights, act, *, epilogue=None, mode="mixed", out=None):
    """Fused clip-quantize-GEMM on the GPU.

    .. math::

        y_{mn} = \\mathrm{epilogue}\\Big(\\sum_k \\hat a(q_a[m, k])\\,\\hat w(q_w[k, n])\\Big)

    Same signature and result as the ``reference`` and ``cpu`` backends (codes and
    int32 accumulators bit-exact in integer mode; float32 within rounding in mixed
    mode). Device input gives a device ``DeviceNDArray``; host input gives numpy.
    Uploads the parameter arrays on every call: keep a :class:`CudaQGemm` for
    repeated calls.
    """
    return CudaQGemm(weights, act, epilogue=epilogue, mode=mode)(x, out=out)


def qgemm_int32(x, weights, act):
    """Int32 accumulators ``sum_k (q_a - z_a)(q_w - z_w[n])`` of integer mode."""
    return CudaQGemm(weights, act, mode="integer")(x, accumulator=True)
