"""Numba CPU backend of the fused clip-quantize-GEMM op (and its conv2d).

Public names (same signature as :mod:`aciq.kernels.reference`):

* ``qgemm(x, weights, act, *, epilogue=None, mode="mixed", out=None)``;
* ``qgemm_int32(x, weights, act)`` -> int32 accumulators of integer mode;
* ``CpuQGemm(weights, act, *, epilogue=None, mode="mixed", groups=1)``: the op
  with its weight panel prepared once (what layers and benchmarks call);
  ``.linear(x)`` and ``.conv2d(x, kernel_size, stride, padding, dilation)``.

Design (measured on a 2-core AMD EPYC / Zen 4, see ``benchmarks/bench_kernels_cpu.py``)
-----------------------------------------------------------------------------------------
One microkernel, :func:`_micro`, computes ``C[r, j] += sum_k A[r, k] B[k, j]``
with an 8-row x 4-k register block; its inner loop over ``j`` runs over
contiguous slices that LLVM vectorises (zmm on AVX-512; FMA contraction is
allowed in this function only). The set-up of a block (32 broadcasts, alias
checks) is paid once per 8 rows x 4 k, so the ``j`` loop must be long: ~80
GFLOP/s on one Zen 4 core for 256-512 columns, ~40-50 for 64. Hence two
orientations of the same product:

* *channels* (linear layers; convs with few output pixels): rows = samples or
  pixels, ``B`` = the weight panel ``[G, K, N/G]`` of centred codes
  ``q_w - z_w[n]`` (float32, contiguous along ``n``), the vector runs along
  output channels (up to 512 per call). Tasks = (M-tile of <= 256 rows, group,
  N-range); per K-block of 64 the tile ``A`` is filled with the quantized
  activations: for ``linear`` the float32 input is clipped and quantized right
  there; for a conv it is gathered from a zero-padded NHWC tensor of codes
  (implicit GEMM: no im2col matrix);
* *pixels* (convs with >= 256 output pixels in the batch, or narrow layers):
  rows = output channels, the weights ``[G, N/G, K]`` are the broadcast
  scalars and the vector runs along a tile of ~256 output pixels (which may
  span images), gathered per K-block of 256 from a zero-padded NCHW tensor of
  codes (runs of output rows; a 1x1 stride-1 conv uses that tensor in place).
  ``C`` rows are output-channel rows of the NCHW output.

Common to both:

1. the input is quantized once per element (not ``kh * kw`` times) into the
   code tensor: ``q_a - z_a`` (integer mode) or ``(q_a - z_k) s_k`` (mixed);
2. in integer mode the float32 partial sums are exact integers as long as
   ``k_count * max|q_a - z_a| * max|q_w - z_w| <= 2**24``; ``C`` is moved into an
   int32 accumulator only when the next K-block could break that bound (never,
   for 8-bit activations and 4-bit weights up to ``K = 8224``), so the int32
   accumulators equal the integer reference bit for bit;
3. the epilogue (fastmath off, the same two roundings as the CUDA backend)
   writes float32, codes or int32 accumulators straight into the NCHW output;
4. every thread owns one set of scratch tiles for all its tasks (no allocator
   traffic or page faults per task); problems under ``SERIAL_FLOP`` run through
   serial builds of the drivers (waking the thread pool costs more than them).

Quantization runs with fastmath off (IEEE float32 division, round half to even)
through :func:`aciq.kernels._scalar.quantize_code`, the helper the CUDA backend
uses too. Every function here is compiled with ``error_model="numpy"``: with
numba's default ("python") each float division carries a zero-divisor check
that blocks vectorisation (30x slower quantization); the scales are validated
``> 0`` on the host, so the check can never fire.

Examples
--------
>>> import numpy as np
>>> from aciq.kernels.spec import ActQuant, quantize_weights
>>> x = np.float32([[0.5, -1.0, 2.0]])
>>> w = quantize_weights(np.float32([[1.0, 1.0, 1.0]]), bits=8)
>>> act = ActQuant.per_tensor(0.25, bits=8, signed=True, k=3)
>>> qgemm_int32(x, w, act).tolist()
[[762]]
"""
from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from ._scalar import quantize_code
from .spec import (ActQuant, Epilogue, QuantWeights, check_operands, check_x, max_integer_k,
                   unpack_codes)

__all__ = ["qgemm", "qgemm_int32", "CpuQGemm", "TILE"]

MB = 256  # most rows of an M-tile (one task of the channels orientation)
KB = 256  # K-block of the pixels orientation
KBC = 64  # K-block of the channels orientation
NB = 512  # columns per microkernel call (long inner loops amortise its set-up)
TILE = (MB, KB, NB)
_EXACT = 1 << 24  # float32 represents every integer of magnitude <= 2**24

_OUT_FLOAT, _OUT_CODE, _OUT_ACC = 0, 1, 2


# ------------------------------------------------------------ scratch fill
@njit(cache=True, error_model="numpy")
def _fill_linear(x, m0, mb, k0, kb, a_scale, a_zp, a_lo, a_hi, integer, A):
    """A[i, k] = centred (integer) or dequantized (mixed) code of x[m0+i, k0+k]."""
    sc = a_scale[k0:k0 + kb]
    zp = a_zp[k0:k0 + kb]
    lo = a_lo[k0:k0 + kb]
    hi = a_hi[k0:k0 + kb]
    for i in range(mb):
        row = x[m0 + i, k0:k0 + kb]
        dst = A[i, :kb]
        for k in range(kb):
            z = zp[k]
            q = quantize_code(row[k], sc[k], z, lo[k], hi[k])
            if integer:
                dst[k] = np.float32(np.int32(q - z))
            else:
                dst[k] = np.float32(np.float32(np.int32(q - z)) * sc[k])


@njit(parallel=True, cache=True, error_model="numpy")
def _quantize_nhwc(x, a_scale, a_zp, a_lo, a_hi, integer, pt, pl, Q):
    """Q[b, h+pt, w+pl, c] = centred/dequantized code of x[b, c, h, w] (Q pre-zeroed)."""
    nb, nc, hh, ww = x.shape
    for t in prange(nb * hh):
        b = t // hh
        h = t - b * hh
        for c in range(nc):
            z = a_zp[c]
            s = a_scale[c]
            lo = a_lo[c]
            hi = a_hi[c]
            for w in range(ww):
                q = quantize_code(x[b, c, h, w], s, z, lo, hi)
                if integer:
                    Q[b, h + pt, w + pl, c] = np.float32(np.int32(q - z))
                else:
                    Q[b, h + pt, w + pl, c] = np.float32(np.float32(np.int32(q - z)) * s)


@njit(cache=True, error_model="numpy")
def _fill_conv(Qf, hp, wp, nc, m0, mb, k0, kb, g, cg, kw, sh, sw, dh, dw, wo, p_out, A):
    """Gather rows m0.. of the implicit im2col matrix (k order: ki, kj, c) into A.

    ``Qf`` is the padded NHWC code tensor ``[N, hp, wp, nc]`` flattened; every
    (ki, kj) tap of a row is a contiguous run of channels, copied by a loop
    over 1-D slices (cheaper than numba's N-d slice assignment).
    """
    for i in range(mb):
        m = m0 + i
        b = m // p_out
        p = m - b * p_out
        oh = p // wo
        ow = p - oh * wo
        r = k0 // cg
        c = k0 - r * cg
        kk = 0
        row = A[i]
        while kk < kb:
            ki = r // kw
            kj = r - ki * kw
            run = min(cg - c, kb - kk)
            off = ((b * hp + oh * sh + ki * dh) * wp + ow * sw + kj * dw) * nc + g * cg + c
            src = Qf[off:off + run]
            dst = row[kk:kk + run]
            for u in range(run):
                dst[u] = src[u]
            kk += run
            c = 0
            r += 1


# -------------------------------------------------------------- microkernel
@njit(cache=True, fastmath={"contract"}, error_model="numpy")
def _micro(A, ar, ak, mb, kb, Bg, k0, n0, nb, C, c0):
    """C[:mb, c0:c0+nb] += A[ar:ar+mb, ak:ak+kb] @ Bg[k0:k0+kb, n0:n0+nb].

    Register blocking: 8 rows of ``A`` x 4 values of ``k`` per pass over a row
    slice of ``C`` (32 FMAs per 4 loads of ``B`` and 8 load/stores of ``C``; the
    best of 4x2 ... 8x4 measured on Zen 4); the ``j`` loop runs over contiguous
    slices so LLVM vectorises it (zmm on AVX-512). Each ``C`` element is updated
    by a chain of FMAs (``t = t + a * x``). Remainders: 1 row, 1 k at a time.
    """
    i = 0
    while i + 7 < mb:
        r0 = C[i + 0, c0:c0 + nb]
        r1 = C[i + 1, c0:c0 + nb]
        r2 = C[i + 2, c0:c0 + nb]
        r3 = C[i + 3, c0:c0 + nb]
        r4 = C[i + 4, c0:c0 + nb]
        r5 = C[i + 5, c0:c0 + nb]
        r6 = C[i + 6, c0:c0 + nb]
        r7 = C[i + 7, c0:c0 + nb]
        q0 = A[ar + i + 0, ak:ak + kb]
        q1 = A[ar + i + 1, ak:ak + kb]
        q2 = A[ar + i + 2, ak:ak + kb]
        q3 = A[ar + i + 3, ak:ak + kb]
        q4 = A[ar + i + 4, ak:ak + kb]
        q5 = A[ar + i + 5, ak:ak + kb]
        q6 = A[ar + i + 6, ak:ak + kb]
        q7 = A[ar + i + 7, ak:ak + kb]
        k = 0
        while k + 3 < kb:
            a00, a01, a02, a03 = q0[k], q0[k + 1], q0[k + 2], q0[k + 3]
            a10, a11, a12, a13 = q1[k], q1[k + 1], q1[k + 2], q1[k + 3]
            a20, a21, a22, a23 = q2[k], q2[k + 1], q2[k + 2], q2[k + 3]
            a30, a31, a32, a33 = q3[k], q3[k + 1], q3[k + 2], q3[k + 3]
            a40, a41, a42, a43 = q4[k], q4[k + 1], q4[k + 2], q4[k + 3]
            a50, a51, a52, a53 = q5[k], q5[k + 1], q5[k + 2], q5[k + 3]
            a60, a61, a62, a63 = q6[k], q6[k + 1], q6[k + 2], q6[k + 3]
            a70, a71, a72, a73 = q7[k], q7[k + 1], q7[k + 2], q7[k + 3]
            b0 = Bg[k0 + k + 0, n0:n0 + nb]
            b1 = Bg[k0 + k + 1, n0:n0 + nb]
            b2 = Bg[k0 + k + 2, n0:n0 + nb]
            b3 = Bg[k0 + k + 3, n0:n0 + nb]
            for j in range(nb):
                x0, x1, x2, x3 = b0[j], b1[j], b2[j], b3[j]
                t = r0[j] + a00 * x0
                t = t + a01 * x1
                t = t + a02 * x2
                r0[j] = t + a03 * x3
                t = r1[j] + a10 * x0
                t = t + a11 * x1
                t = t + a12 * x2
                r1[j] = t + a13 * x3
                t = r2[j] + a20 * x0
                t = t + a21 * x1
                t = t + a22 * x2
                r2[j] = t + a23 * x3
                t = r3[j] + a30 * x0
                t = t + a31 * x1
                t = t + a32 * x2
                r3[j] = t + a33 * x3
                t = r4[j] + a40 * x0
                t = t + a41 * x1
                t = t + a42 * x2
                r4[j] = t + a43 * x3
                t = r5[j] + a50 * x0
                t = t + a51 * x1
                t = t + a52 * x2
                r5[j] = t + a53 * x3
                t = r6[j] + a60 * x0
                t = t + a61 * x1
                t = t + a62 * x2
                r6[j] = t + a63 * x3
                t = r7[j] + a70 * x0
                t = t + a71 * x1
                t = t + a72 * x2
                r7[j] = t + a73 * x3
            k += 4
        while k < kb:
            a00 = q0[k]
            a10 = q1[k]
            a20 = q2[k]
            a30 = q3[k]
            a40 = q4[k]
            a50 = q5[k]
            a60 = q6[k]
            a70 = q7[k]
            b0 = Bg[k0 + k, n0:n0 + nb]
            for j in range(nb):
                x0 = b0[j]
                r0[j] = r0[j] + a00 * x0
                r1[j] = r1[j] + a10 * x0
                r2[j] = r2[j] + a20 * x0
                r3[j] = r3[j] + a30 * x0
                r4[j] = r4[j] + a40 * x0
                r5[j] = r5[j] + a50 * x0
                r6[j] = r6[j] + a60 * x0
                r7[j] = r7[j] + a70 * x0
            k += 1
        i += 8
    while i < mb:
        r0 = C[i, c0:c0 + nb]
        q0 = A[ar + i, ak:ak + kb]
        k = 0
        while k + 3 < kb:
            a00, a01, a02, a03 = q0[k], q0[k + 1], q0[k + 2], q0[k + 3]
            b0 = Bg[k0 + k + 0, n0:n0 + nb]
            b1 = Bg[k0 + k + 1, n0:n0 + nb]
            b2 = Bg[k0 + k + 2, n0:n0 + nb]
            b3 = Bg[k0 + k + 3, n0:n0 + nb]
            for j in range(nb):
                t = r0[j] + a00 * b0[j]
                t = t + a01 * b1[j]
                t = t + a02 * b2[j]
                r0[j] = t + a03 * b3[j]
            k += 4
        while k < kb:
            a00 = q0[k]
            b0 = Bg[k0 + k, n0:n0 + nb]
            for j in range(nb):
                r0[j] = r0[j] + a00 * b0[j]
            k += 1
        i += 1


# ----------------------------------------------------------------- epilogue
@njit(cache=True, inline="always", error_model="numpy")
def _epi_value(acc_f, acc_i, integer, sa_ws, ws, bs, relu):
    """Dequantized output value of one accumulator (two float32 roundings)."""
    if integer:
        y = np.float32(np.float32(acc_i) * sa_ws)
    else:
        y = np.float32(acc_f * ws)
    y = np.float32(y + bs)
    if relu and y < np.float32(0.0):
        y = np.float32(0.0)
    return y


@njit(cache=True, error_model="numpy")
def _epilogue_tile(C, Ci, integer, mb, m0, p_out, n_first, ncols, s_a, w_scale, bias, relu,
                   out_kind, o_scale, o_zp, o_lo, o_hi, out_f, out_q, out_i):
    """N-vector tile (rows = pixels m, columns = channels): write out[b, n, p].

    In integer mode the accumulator is ``Ci + int32(C)`` (``C`` holds the exact
    float32 partial sum of the K-blocks not yet flushed into ``Ci``).
    """
    rb = np.empty(mb, np.intp)
    rp = np.empty(mb, np.intp)
    for i in range(mb):
        rb[i] = (m0 + i) // p_out
        rp[i] = (m0 + i) - rb[i] * p_out
    for jj in range(ncols):
        n = n_first + jj
        ws = w_scale[n]
        bs = bias[n]
        sa_ws = np.float32(np.float32(s_a) * ws)
        for i in range(mb):
            b = rb[i]
            p = rp[i]
            acc = np.int32(0)
            if integer:
                acc = np.int32(Ci[i, jj] + np.int32(C[i, jj]))
            if out_kind == _OUT_ACC:
                out_i[b, n, p] = acc
                continue
            y = _epi_value(C[i, jj], acc, integer, sa_ws, ws, bs, relu)
            if out_kind == _OUT_CODE:
                out_q[b, n, p] = np.int8(quantize_code(y, o_scale, o_zp, o_lo, o_hi))
            else:
                out_f[b, n, p] = y


@njit(cache=True, error_model="numpy")
def _epilogue_rows(C, Ci, col0, integer, nrows, b, p0, pb, n_first, s_a, w_scale, bias, relu,
                   out_kind, o_scale, o_zp, o_lo, o_hi, out_f, out_q, out_i):
    """M-vector tile: columns col0.. of C (rows = channels) -> pixels p0..p0+pb of image b."""
    for r in range(nrows):
        n = n_first + r
        ws = w_scale[n]
        bs = bias[n]
        sa_ws = np.float32(np.float32(s_a) * ws)
        cr = C[r, col0:col0 + pb]
        if out_kind == _OUT_ACC:
            ci = Ci[r, col0:col0 + pb]
            dst_i = out_i[b, n, p0:p0 + pb]
            for j in range(pb):
                dst_i[j] = np.int32(ci[j] + np.int32(cr[j]))
        elif out_kind == _OUT_CODE:
            ci = Ci[r, col0:col0 + pb]
            dst_q = out_q[b, n, p0:p0 + pb]
            for j in range(pb):
                acc = np.int32(0)
                if integer:
                    acc = np.int32(ci[j] + np.int32(cr[j]))
                y = _epi_value(cr[j], acc, integer, sa_ws, ws, bs, relu)
                dst_q[j] = np.int8(quantize_code(y, o_scale, o_zp, o_lo, o_hi))
        elif integer:
            ci = Ci[r, col0:col0 + pb]
            dst_f = out_f[b, n, p0:p0 + pb]
            for j in range(pb):
                y = np.float32(np.float32(np.int32(ci[j] + np.int32(cr[j]))) * sa_ws)
                y = np.float32(y + bs)
                if relu and y < np.float32(0.0):
                    y = np.float32(0.0)
                dst_f[j] = y
        else:
            dst_f = out_f[b, n, p0:p0 + pb]
            for j in range(pb):
                y = np.float32(np.float32(cr[j] * ws) + bs)
                if relu and y < np.float32(0.0):
                    y = np.float32(0.0)
                dst_f[j] = y


@njit(cache=True, error_model="numpy")
def _flush(C, Ci, rows, cols):
    """Ci += int32(C); C = 0 (integer mode; C holds exact integers < 2**24)."""
    for i in range(rows):
        c = C[i, :cols]
        ci = Ci[i, :cols]
        for j in range(cols):
            ci[j] += np.int32(c[j])
            c[j] = np.float32(0.0)


# ------------------------------------------------------------- fused drivers
@njit(parallel=True, cache=True, error_model="numpy")
def _fused(src_conv, x, Q, a_scale, a_zp, a_lo, a_hi, cg, kw, sh, sw, dh, dw, wo,
           Bp, integer, kexact, n_split, m_total, p_out,
           s_a, w_scale, bias, relu, out_kind, o_scale, o_zp, o_lo, o_hi, out_f, out_q, out_i,
           threads, mtile, kbc):
    """N-vector orientation: rows = pixels/samples (scalars), vectors along channels.

    Tasks = (M-tile of ``mtile`` rows, group, N-range); weight panel ``Bp[g, k, n]``.
    K-blocks of ``KBC``: a ``[KBC, 512]`` block of the panel stays in L2 while
    every 8-row block of the M-tile streams over it.
    """
    groups = Bp.shape[0]
    hp, wp, nc = Q.shape[1], Q.shape[2], Q.shape[3]
    Qf = Q.reshape(Q.size)
    kg = Bp.shape[1]
    og = Bp.shape[2]
    nmt = (m_total + mtile - 1) // mtile
    chunk = (og + n_split - 1) // n_split
    chunk = ((chunk + 15) // 16) * 16
    ntask = nmt * groups * n_split
    nth = min(max(threads, 1), ntask)
    for th in prange(nth):
        # one scratch set per thread (not per task): no allocator traffic or page faults
        A = np.empty((mtile, kbc), np.float32)
        C = np.empty((mtile, og), np.float32)
        Ci = np.empty((mtile if integer else 1, og), np.int32)
        for t in range(th * ntask // nth, (th + 1) * ntask // nth):
            _task_chan(t, src_conv, x, Qf, hp, wp, nc, a_scale, a_zp, a_lo, a_hi, cg, kw, sh, sw,
                       dh, dw, wo, Bp, integer, kexact, n_split, chunk, m_total, p_out, s_a,
                       w_scale, bias, relu, out_kind, o_scale, o_zp, o_lo, o_hi, out_f, out_q,
                       out_i, A, C, Ci, mtile, kbc)


@njit(cache=True, error_model="numpy")
def _task_chan(t, src_conv, x, Qf, hp, wp, nc, a_scale, a_zp, a_lo, a_hi, cg, kw, sh, sw, dh, dw,
               wo, Bp, integer, kexact, n_split, chunk, m_total, p_out, s_a, w_scale, bias, relu,
               out_kind, o_scale, o_zp, o_lo, o_hi, out_f, out_q, out_i, A, C, Ci, mtile, kbc):
    """One task of :func:`_fused` (scratch ``A``, ``C``, ``Ci`` owned by the calling thread)."""
    groups = Bp.shape[0]
    kg = Bp.shape[1]
    og = Bp.shape[2]
    mt = t // (groups * n_split)
    rem = t - mt * (groups * n_split)
    g = rem // n_split
    s = rem - g * n_split
    m0 = mt * mtile
    mb = min(mtile, m_total - m0)
    j0 = s * chunk
    j1 = min(og, j0 + chunk)
    if j0 >= j1:
        return
    ncols = j1 - j0
    C[:mb, :ncols] = 0.0
    if integer:
        Ci[:mb, :ncols] = 0
    Bg = Bp[g]
    kacc = 0
    for k0 in range(0, kg, kbc):
        kb = min(kbc, kg - k0)
        if integer and kacc + kb > kexact:
            _flush(C, Ci, mb, ncols)
            kacc = 0
        kacc += kb
        if src_conv:
            _fill_conv(Qf, hp, wp, nc, m0, mb, k0, kb, g, cg, kw, sh, sw, dh, dw, wo,
                       p_out, A)
        else:
            _fill_linear(x, m0, mb, k0, kb, a_scale, a_zp, a_lo, a_hi, integer, A)
        for n0 in range(j0, j1, NB):
            _micro(A, 0, 0, mb, kb, Bg, k0, n0, min(NB, j1 - n0), C, n0 - j0)
    _epilogue_tile(C, Ci, integer, mb, m0, p_out, g * og + j0, ncols, s_a, w_scale, bias,
                   relu, out_kind, o_scale, o_zp, o_lo, o_hi, out_f, out_q, out_i)


@njit(cache=True, error_model="numpy")
def _pixel_bases(nc, hp, wp, ho, wo, sh, sw, m0, pb, base):
    """base[j] = flat offset in the padded NCHW codes of output pixel m0 + j at (c, ki, kj) = 0."""
    for j in range(pb):
        m = m0 + j
        b = m // (ho * wo)
        p = m - b * (ho * wo)
        oh = p // wo
        ow = p - oh * wo
        base[j] = (b * nc * hp + oh * sh) * wp + ow * sw


@njit(cache=True, error_model="numpy")
def _pack_pixels(Qf, base, hp, wp, g, cg, kh, kw, dh, dw, pb, k0, kb, At):
    """At[kk, j] = Q[b, g*cg + c, oh*sh + ki*dh, ow*sw + kj*dw] for k0+kk = (c, ki, kj).

    ``Q`` is the zero-padded NCHW code tensor (flattened ``Qf``); output pixel
    ``m0 + j = (b * ho + oh) * wo + ow`` (a tile may span images) starts at
    ``base[j]`` (:func:`_pixel_bases`), and each K row adds one offset: a plain
    gather, faster than copying runs of output rows (2x on conv1, 2.4x on 7x7
    maps, where runs are 7 long).
    """
    taps = kh * kw
    for kk in range(kb):
        k = k0 + kk
        c = k // taps
        r = k - c * taps
        ki = r // kw
        kj = r - ki * kw
        off = ((g * cg + c) * hp + ki * dh) * wp + kj * dw
        dst = At[kk]
        for j in range(pb):
            dst[j] = Qf[base[j] + off]


@njit(parallel=True, cache=True, error_model="numpy")
def _fused_pix(Q, direct, kh, kw, sh, sw, dh, dw, ho, wo, Wt, integer, kexact, n_split, pt,
               s_a, w_scale, bias, relu, out_kind, o_scale, o_zp, o_lo, o_hi,
               out_f, out_q, out_i, threads):
    """M-vector orientation for convs: rows = output channels (weights are the
    scalars), vectors along output pixels -- long contiguous inner loops for
    layers with few channels, and the NCHW output is written row by row.

    Tasks = (pixel tile of ``pt``, group, channel range); weight panel
    ``Wt[g, n, k]`` (k in ``(c, ki, kj)`` order). ``direct`` (1x1, stride 1, no
    padding): the code tensor ``Q[b]`` viewed as ``[C, H*W]`` is used in place.
    """
    nbatch, nc, hp, wp = Q.shape
    groups, og, kg = Wt.shape
    cg = nc // groups
    p_out = ho * wo
    Qf = Q.reshape(Q.size)
    Q2 = Q.reshape(nbatch * nc, hp * wp)
    m_total = nbatch * p_out
    flat = not direct
    npt = (p_out + pt - 1) // pt
    ntile = (m_total + pt - 1) // pt if flat else nbatch * npt
    chunk = (og + n_split - 1) // n_split
    chunk = ((chunk + 7) // 8) * 8
    ntask = ntile * groups * n_split
    nth = min(max(threads, 1), ntask)
    for th in prange(nth):
        C = np.empty((chunk, pt), np.float32)
        Ci = np.empty((chunk if integer else 1, pt), np.int32)
        At = np.empty((1 if direct else KB, pt), np.float32)
        base = np.empty(pt, np.intp)
        for t in range(th * ntask // nth, (th + 1) * ntask // nth):
            _task_pix(t, Qf, Q2, nc, hp, wp, direct, flat, kh, kw, sh, sw, dh, dw, ho, wo, p_out,
                      m_total, Wt, integer, kexact, n_split, chunk, pt, npt, s_a, w_scale, bias,
                      relu, out_kind, o_scale, o_zp, o_lo, o_hi, out_f, out_q, out_i, C, Ci, At,
                      base)


@njit(cache=True, error_model="numpy")
def _task_pix(t, Qf, Q2, nc, hp, wp, direct, flat, kh, kw, sh, sw, dh, dw, ho, wo, p_out,
              m_total, Wt, integer, kexact, n_split, chunk, pt, npt, s_a, w_scale, bias, relu,
              out_kind, o_scale, o_zp, o_lo, o_hi, out_f, out_q, out_i, C, Ci, At, base):
    """One task of :func:`_fused_pix` (scratch owned by the calling thread)."""
    groups, og, kg = Wt.shape
    cg = nc // groups
    s = t % n_split
    rest = t // n_split
    g = rest % groups
    tp = rest // groups
    if flat:  # tiles of the flattened (image, pixel) index
        m0 = tp * pt
        pb = min(pt, m_total - m0)
    else:  # tiles inside one image (direct: Q[b] viewed as [C, H*W] in place)
        b = tp // npt
        p0 = (tp - b * npt) * pt
        m0 = b * p_out + p0
        pb = min(pt, p_out - p0)
    j0 = s * chunk
    j1 = min(og, j0 + chunk)
    if j0 >= j1:
        return
    nrows = j1 - j0
    C[:nrows, :pb] = 0.0
    if integer:
        Ci[:nrows, :pb] = 0
    Wg = Wt[g]
    if not direct:
        _pixel_bases(nc, hp, wp, ho, wo, sh, sw, m0, pb, base)
    kacc = 0
    for k0 in range(0, kg, KB):
        kb = min(KB, kg - k0)
        if integer and kacc + kb > kexact:
            _flush(C, Ci, nrows, pb)
            kacc = 0
        kacc += kb
        if direct:
            b = m0 // p_out
            _micro(Wg, j0, k0, nrows, kb, Q2, b * nc + g * cg + k0, m0 - b * p_out, pb, C, 0)
        else:
            _pack_pixels(Qf, base, hp, wp, g, cg, kh, kw, dh, dw, pb, k0, kb, At)
            _micro(Wg, j0, k0, nrows, kb, At, 0, 0, pb, C, 0)
    col = 0
    while col < pb:  # one run per image
        m = m0 + col
        b = m // p_out
        p = m - b * p_out
        run = min(p_out - p, pb - col)
        _epilogue_rows(C, Ci, col, integer, nrows, b, p, run, g * og + j0, s_a, w_scale, bias,
                       relu, out_kind, o_scale, o_zp, o_lo, o_hi, out_f, out_q, out_i)
        col += run


@njit(parallel=True, cache=True, error_model="numpy")
def _fused_taps(Q3, kh, kw, dh, dw, ho, wo, wp, Wtap, integer, kexact, n_split, pt,
                s_a, w_scale, bias, relu, out_kind, o_scale, o_zp, o_lo, o_hi,
                out_f, out_q, out_i, threads):
    """Pixels orientation of a stride-1 conv without any gather ("shifted GEMMs").

    Output pixels are indexed on the padded width, ``v = oh * wp + ow`` (the
    ``wp - wo`` extra columns of each row are computed and dropped); then for
    a tap ``(ki, kj)`` the operand row of channel ``c`` is the contiguous slice
    ``Q3[b, c, v0 + ki*dh*wp + kj*dw : ...]`` of the padded plane, used in place.
    ``Q3[b, c]`` holds the padded plane plus a zero tail that the dropped
    columns of the last row may read. Weight panel ``Wtap[g, tap, n, c]``.
    Tasks = (image, tile of ``pt`` values of ``v``, group, channel range).
    """
    nbatch, nc, _ = Q3.shape
    groups, taps, og, cg = Wtap.shape
    v_total = ho * wp
    npt = (v_total + pt - 1) // pt
    chunk = (og + n_split - 1) // n_split
    chunk = ((chunk + 7) // 8) * 8
    ntask = nbatch * npt * groups * n_split
    nth = min(max(threads, 1), ntask)
    for th in prange(nth):
        C = np.empty((chunk, pt), np.float32)
        Ci = np.empty((chunk if integer else 1, pt), np.int32)
        for t in range(th * ntask // nth, (th + 1) * ntask // nth):
            _task_taps(t, Q3, kh, kw, dh, dw, ho, wo, wp, Wtap, integer, kexact, n_split, chunk,
                       pt, npt, s_a, w_scale, bias, relu, out_kind, o_scale, o_zp, o_lo, o_hi,
                       out_f, out_q, out_i, C, Ci)


@njit(cache=True, error_model="numpy")
def _task_taps(t, Q3, kh, kw, dh, dw, ho, wo, wp, Wtap, integer, kexact, n_split, chunk, pt, npt,
               s_a, w_scale, bias, relu, out_kind, o_scale, o_zp, o_lo, o_hi, out_f, out_q, out_i,
               C, Ci):
    """One task of :func:`_fused_taps`."""
    groups, taps, og, cg = Wtap.shape
    v_total = ho * wp
    s = t % n_split
    rest = t // n_split
    g = rest % groups
    rest = rest // groups
    tp = rest % npt
    b = rest // npt
    v0 = tp * pt
    vb = min(pt, v_total - v0)
    j0 = s * chunk
    j1 = min(og, j0 + chunk)
    if j0 >= j1:
        return
    nrows = j1 - j0
    C[:nrows, :vb] = 0.0
    if integer:
        Ci[:nrows, :vb] = 0
    Qb = Q3[b]
    kacc = 0
    for tap in range(taps):
        ki = tap // kw
        kj = tap - ki * kw
        shift = ki * dh * wp + kj * dw
        Wg = Wtap[g, tap]
        for c0 in range(0, cg, KB):
            kb = min(KB, cg - c0)
            if integer and kacc + kb > kexact:
                _flush(C, Ci, nrows, vb)
                kacc = 0
            kacc += kb
            _micro(Wg, j0, c0, nrows, kb, Qb, g * cg + c0, v0 + shift, vb, C, 0)
    oh = v0 // wp
    while oh * wp < v0 + vb:  # one run per output row; columns ow >= wo are dropped
        a = max(v0, oh * wp)
        e = min(v0 + vb, oh * wp + wo)
        if e > a:
            ow = a - oh * wp
            _epilogue_rows(C, Ci, a - v0, integer, nrows, b, oh * wo + ow, e - a, g * og + j0, s_a,
                           w_scale, bias, relu, out_kind, o_scale, o_zp, o_lo, o_hi, out_f,
                           out_q, out_i)
        oh += 1


# the same drivers compiled without threads: for small problems the wake-up of
# the thread pool costs more than the work (prange runs as range)
_fused_serial = njit(cache=True, error_model="numpy")(_fused.py_func)
_fused_pix_serial = njit(cache=True, error_model="numpy")(_fused_pix.py_func)
_fused_taps_serial = njit(cache=True, error_model="numpy")(_fused_taps.py_func)


@njit(parallel=True, cache=True, error_model="numpy")
def _quantize_nchw(x, a_scale, a_zp, a_lo, a_hi, integer, pt, pl, Q):
    """Q[b, c, h+pt, w+pl] = centred/dequantized code of x[b, c, h, w] (border pre-zeroed)."""
    nb, nc, hh, ww = x.shape
    for t in prange(nb * nc):
        b = t // nc
        c = t - b * nc
        z = a_zp[c]
        s = a_scale[c]
        lo = a_lo[c]
        hi = a_hi[c]
        for h in range(hh):
            src = x[b, c, h]
            dst = Q[b, c, h + pt, pl:pl + ww]
            for w in range(ww):
                q = quantize_code(src[w], s, z, lo, hi)
                if integer:
                    dst[w] = np.float32(np.int32(q - z))
                else:
                    dst[w] = np.float32(np.float32(np.int32(q - z)) * s)


# ------------------------------------------------------------------ host side
_DUMMY_X = np.zeros((1, 1), np.float32)
_DUMMY_Q = np.zeros((1, 1, 1, 1), np.float32)
_DUMMY_F = np.zeros((1, 1, 1), np.float32)
_DUMMY_I8 = np.zeros((1, 1, 1), np.int8)
_DUMMY_I32 = np.zeros((1, 1, 1), np.int32)
SHIFTED = True  # stride-1 convs in the pixels orientation as shifted GEMMs (no gather)
SERIAL_FLOP = 10_000_000  # below this many flops a call runs on one thread
PIX_TILE = 256  # pixels per task of the M-vector conv driver (rounded to balance tiles)


def _n_split(tasks: int, og: int, quantum: int = 32) -> int:
    """Splits of the channel range per task so that the threads get equal shares.

    Threads take contiguous, equal runs of tasks (static partition), so the
    smallest split making ``tasks * split`` a multiple of the thread count
    balances them; splitting more only shortens the vector loops.
    """
    threads = numba.get_num_threads()
    if tasks >= 4 * threads:
        return 1
    want = next(s for s in range(1, threads + 1) if (tasks * s) % threads == 0)
    return max(1, min(want, -(-og // quantum)))


def _pixel_tile(p_out: int) -> int:
    """Tile of about PIX_TILE pixels, balanced so the last tile is not tiny."""
    ntile = -(-p_out // PIX_TILE)
    return ((-(-p_out // ntile) + 15) // 16) * 16


class CpuQGemm:
    """The fused op with the weight panel prepared once (a reusable "plan").

    Parameters
    ----------
    weights : QuantWeights
        ``[N, K]``; for a conv, ``K = (C / groups) * kh * kw`` in the order of
        ``weight.reshape(O, -1)`` (pass ``kernel_size`` to :meth:`conv2d`).
    act : ActQuant
        ``K`` channels for :meth:`linear`; ``C`` channels for :meth:`conv2d`.
    epilogue : Epilogue, optional
    mode : {"mixed", "integer"}
    groups : int
        Conv groups (1 for linear).
    kernel_size : (int, int), optional
        Needed for a conv panel.

    Notes
    -----
    A conv runs in one of two orientations of the same microkernel, chosen per
    call by :meth:`orientation`: *pixels* (output channels are the broadcast
    scalars, the vector runs along output pixels, tiles of ~256 pixels that may
    span images; whenever there are enough output pixels) or *channels* (pixels
    are the scalars, the vector runs along output channels; wide layers at
    batch 1 on small images, and every linear layer). Both panels are built
    lazily, once.

    Examples
    --------
    >>> from aciq.kernels.spec import ActQuant, quantize_weights
    >>> w = quantize_weights(np.eye(3, dtype=np.float32), bits=4)
    >>> plan = CpuQGemm(w, ActQuant.per_tensor(0.5, bits=8, k=3), mode="integer")
    >>> np.round(plan.linear(np.float32([[1.0, 2.0, 3.0]])), 4).tolist()
    [[1.0, 2.0, 3.0]]
    """

    def __init__(self, weights: QuantWeights, act: ActQuant, *, epilogue: Epilogue | None = None,
                 mode: str = "mixed", groups: int = 1, kernel_size=None):
        if not isinstance(weights, QuantWeights):
            raise ValueError(f"weights must be a QuantWeights, got {type(weights).__name__}")
        if not isinstance(act, ActQuant):
            raise ValueError(f"act must be an ActQuant, got {type(act).__name__}")
        self.weights, self.act, self.mode = weights, act, mode
        self.groups = int(groups)
        n, k = weights.n, weights.k
        if self.groups < 1 or n % self.groups:
            raise ValueError(f"groups={groups} must divide the {n} output channels")
        og = n // self.groups
        self._wc = unpack_codes(weights).astype(np.int32) - weights.zero_point[:, None]
        if kernel_size is None:
            if self.groups != 1:
                raise ValueError("groups > 1 needs kernel_size (a conv panel)")
            self.kernel_size = None
        else:
            kh, kw = (int(v) for v in kernel_size)
            if k % (kh * kw):
                raise ValueError(f"weights K={k} is not a multiple of kh*kw={kh * kw}")
            self.kernel_size = (kh, kw)
        self._og = og
        self._panels = {}
        self.epilogue = Epilogue() if epilogue is None else epilogue
        if not isinstance(self.epilogue, Epilogue):
            raise ValueError(f"epilogue must be an Epilogue or None, got {type(epilogue).__name__}")
        self.bias = self.epilogue.bias_or_zeros(n)
        if mode not in ("integer", "mixed"):
            raise ValueError(f"mode must be one of ('integer', 'mixed'), got {mode!r}")
        integer = mode == "integer"
        if integer and not act.is_per_tensor:
            raise ValueError("mode='integer' needs a per-tensor act scale and zero_point; use mode='mixed'")
        if integer and k > max_integer_k(act, weights):
            raise ValueError(f"K={k} may overflow the int32 accumulator in mode='integer' "
                             f"(K must be <= {max_integer_k(act, weights)} for these bit widths)")
        bound = max(act.max_centered() * weights.max_centered(), 1)
        # float32 partial sums stay exact integers over at most `kexact` products
        self.kexact = max(1, _EXACT // bound) if integer else 1 << 62
        self._integer = integer
        self._s_a = np.float32(act.scale[0])
        e = self.epilogue
        if e.out_bits is None:
            self._o = (np.float32(1.0), 0, 0, 0)
        else:
            lo, hi = e.out_range
            self._o = (np.float32(e.out_scale), e.out_zero_point, lo, hi)
        self._kind = _OUT_FLOAT if e.out_bits is None else _OUT_CODE

    # --------------------------------------------------------------- panels
    def _panel(self, which: str) -> np.ndarray:
        """``"kn"``: ``[G, K, N/G]`` (channels orientation; conv K in (ki, kj, c) order);
        ``"nk"``: ``[G, N/G, K]`` (pixels orientation; K in (c, ki, kj) order)."""
        p = self._panels.get(which)
        if p is None:
            wc, g, og, k = self._wc, self.groups, self._og, self.weights.k
            if which == "nk":
                p = wc.reshape(g, og, k).astype(np.float32)
            elif which == "tnk":  # [G, kh*kw, N/G, C/G]
                kh, kw = self.kernel_size
                cg = k // (kh * kw)
                p = wc.reshape(g, og, cg, kh, kw).transpose(0, 3, 4, 1, 2)
                p = p.reshape(g, kh * kw, og, cg).astype(np.float32)
            elif self.kernel_size is None:
                p = wc.T.astype(np.float32)[None]
            else:
                kh, kw = self.kernel_size
                cg = k // (kh * kw)
                # [O, cg, kh, kw] -> [G, kh, kw, cg, og] -> [G, kh*kw*cg, og]
                w4 = wc.reshape(g, og, cg, kh, kw).transpose(0, 3, 4, 2, 1)
                p = w4.reshape(g, kh * kw * cg, og).astype(np.float32)
            p = np.ascontiguousarray(p)
            self._panels[which] = p
        return p

    @property
    def panel(self) -> np.ndarray:
        """The channels-orientation panel ``[G, K, N/G]`` (float32 centred codes)."""
        return self._panel("kn")

    def orientation(self, m_total: int) -> str:
        """``"pixels"`` or ``"channels"`` for a conv with ``m_total = N * H' * W'`` outputs
        per channel: pixels when pixel tiles of ~256 exist (or the layer is narrow)."""
        return "pixels" if m_total >= 256 or (self._og < 256 and m_total >= 64) else "channels"

    # -------------------------------------------------------------- helpers
    def _out_arrays(self, bshape, out, out_kind):
        """Allocate (or check) the result and the three 3-D views the kernel writes."""
        b, n, p = bshape
        dtype = np.dtype(np.int32) if out_kind == _OUT_ACC else self.epilogue.out_dtype
        size = b * n * max(p, 1)
        if out is None:
            res = np.empty((b, n, p) if p else (b, n), dtype)
        else:
            if not isinstance(out, np.ndarray):
                raise ValueError(f"out must be a numpy array, got {type(out).__name__}")
            if out.dtype != dtype or out.size != size or not out.flags["C_CONTIGUOUS"] \
                    or not out.flags["WRITEABLE"]:
                raise ValueError(f"out must be a writeable C-contiguous {dtype} array of "
                                 f"{size} elements, got {out.dtype} {out.shape}")
            res = out
        view = res.reshape(b, n, max(p, 1))
        f, q, i = _DUMMY_F, _DUMMY_I8, _DUMMY_I32
        if out_kind == _OUT_ACC:
            i = view
        elif out_kind == _OUT_CODE:
            q = view.view(np.int8)
        else:
            f = view
        return res, f, q, i

    def _run(self, src_conv, x2, Q, geom, m_total, p_out, out, out_kind):
        act, w = self.act, self.weights
        cg, kw, sh, sw, dh, dw, wo = geom
        g = self.groups
        panel = self._panel("kn")
        nmt = -(-m_total // MB)
        mtile = ((-(-m_total // nmt) + 7) // 8) * 8  # balanced tiles of <= MB rows
        serial = numba.get_num_threads() == 1 or 2 * m_total * w.k * w.n < SERIAL_FLOP
        split = 1 if serial else _n_split(nmt * g, panel.shape[2])
        bshape = (m_total, w.n, 0) if p_out == 1 and not src_conv else (m_total // p_out, w.n, p_out)
        res, f, q, i = self._out_arrays(bshape, out, out_kind)
        o_scale, o_zp, o_lo, o_hi = self._o
        run, threads = (_fused_serial, 1) if serial else (_fused, numba.get_num_threads())
        run(src_conv, x2, Q, act.scale, act.zero_point, act.qmin, act.qmax,
               cg, kw, sh, sw, dh, dw, wo, panel, self._integer, self.kexact, split, m_total,
               p_out, self._s_a, w.scale, self.bias, self.epilogue.relu, out_kind,
               o_scale, o_zp, o_lo, o_hi, f, q, i, threads, mtile, KBC)
        return res

    def _check_acc(self, accumulator):
        if accumulator and self.mode != "integer":
            raise ValueError("mode: accumulators are only defined for mode='integer'")

    # --------------------------------------------------------------- entry
    def __call__(self, x, *, out=None, accumulator: bool = False):
        """Same as :meth:`linear` (the signature of ``CudaQGemm.__call__``)."""
        return self.linear(x, out=out, accumulator=accumulator)

    def linear(self, x, *, out=None, accumulator: bool = False):
        """``y[M, N]`` for ``x[M, K]`` (float32, C-contiguous; no silent copy)."""
        if self.kernel_size is not None:
            raise ValueError("this plan holds a conv panel; call conv2d")
        self._check_acc(accumulator)
        if not isinstance(x, np.ndarray):
            x = np.asarray(x)
        check_x(x, self.weights.k)  # weights/act/epilogue/mode were checked once in __init__
        kind = _OUT_ACC if accumulator else self._kind
        return self._run(False, x, _DUMMY_Q, (1, 1, 1, 1, 1, 1, 1), x.shape[0], 1, out, kind)

    def conv2d(self, x, *, stride=(1, 1), padding=(0, 0), dilation=(1, 1), out=None,
               accumulator: bool = False, orientation: str | None = None):
        """``y[N, O, H', W']`` for ``x[N, C, H, W]`` (float32, C-contiguous).

        ``orientation`` (``"pixels"`` | ``"channels"``) overrides the choice of
        :meth:`orientation` (for tests and benchmarks; results are identical).
        """
        if self.kernel_size is None:
            raise ValueError("this plan holds a linear panel; build it with kernel_size")
        self._check_acc(accumulator)
        kh, kw = self.kernel_size
        x = np.asarray(x) if not isinstance(x, np.ndarray) else x
        if x.ndim != 4:
            raise ValueError(f"x must be 4-D (N, C, H, W), got shape {x.shape}")
        if x.dtype != np.float32:
            raise ValueError(f"x must be float32, got {x.dtype}")
        if not x.flags["C_CONTIGUOUS"]:
            raise ValueError("x must be C-contiguous (no silent copy)")
        nb, c, h, wd = x.shape
        cg = self.weights.k // (kh * kw)
        if c != cg * self.groups:
            raise ValueError(f"x has C={c} channels, expected {cg * self.groups} (= C/groups * groups)")
        if self.act.k != c:
            raise ValueError(f"act has K={self.act.k} channels but x has C={c}")
        (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
        ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        wo = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        if ho < 1 or wo < 1:
            raise ValueError(f"x of spatial size {(h, wd)} is too small for this kernel/padding")
        orient = self.orientation(nb * ho * wo) if orientation is None else orientation
        if orient not in ("pixels", "channels"):
            raise ValueError(f"orientation must be 'pixels', 'channels' or None, "
                             f"got {orientation!r}")
        kind = _OUT_ACC if accumulator else self._kind
        act = self.act
        hp, wp = h + 2 * ph, wd + 2 * pw
        alloc = np.zeros if (ph or pw) else np.empty
        if orient == "channels":
            Q = alloc((nb, hp, wp, c), np.float32)
            _quantize_nhwc(x, act.scale, act.zero_point, act.qmin, act.qmax, self._integer,
                           ph, pw, Q)
            res = self._run(True, _DUMMY_X, Q, (cg, kw, sh, sw, dh, dw, wo), nb * ho * wo,
                            ho * wo, out, kind)
            return res.reshape(nb, self.weights.n, ho, wo)
        p_out = ho * wo
        serial = numba.get_num_threads() == 1 or 2 * nb * p_out * self.weights.k * self.weights.n \
            < SERIAL_FLOP
        if SHIFTED and sh == 1 and sw == 1 and (kh > 1 or kw > 1) and 8 * (wp - wo) <= wo:
            # stride 1, at most 1/8 of extra columns: shifted GEMMs, no gather
            tail = (kw - 1) * dw
            Q3 = np.zeros((nb, c, hp * wp + tail), np.float32)
            _quantize_nchw(x, act.scale, act.zero_point, act.qmin, act.qmax, self._integer, ph,
                           pw, Q3[:, :, :hp * wp].reshape(nb, c, hp, wp))
            pt = _pixel_tile(ho * wp)
            ntile = nb * -(-(ho * wp) // pt)
            split = 1 if serial else _n_split(ntile * self.groups, self._og, 8)
            res, f, q, i = self._out_arrays((nb, self.weights.n, p_out), out, kind)
            o_scale, o_zp, o_lo, o_hi = self._o
            run, threads = (_fused_taps_serial, 1) if serial else (_fused_taps,
                                                                    numba.get_num_threads())
            run(Q3, kh, kw, dh, dw, ho, wo, wp, self._panel("tnk"), self._integer, self.kexact,
                split, pt, self._s_a, self.weights.scale, self.bias, self.epilogue.relu, kind,
                o_scale, o_zp, o_lo, o_hi, f, q, i, threads)
            return res.reshape(nb, self.weights.n, ho, wo)
        Q = alloc((nb, c, hp, wp), np.float32)
        _quantize_nchw(x, act.scale, act.zero_point, act.qmin, act.qmax, self._integer, ph, pw, Q)
        direct = kh == 1 and kw == 1 and sh == 1 and sw == 1 and ph == 0 and pw == 0
        panel = self._panel("nk")
        pt = _pixel_tile(p_out if direct else nb * p_out)
        ntile = nb * -(-p_out // pt) if direct else -(-nb * p_out // pt)
        split = 1 if serial else _n_split(ntile * self.groups, self._og, 8)
        res, f, q, i = self._out_arrays((nb, self.weights.n, p_out), out, kind)
        o_scale, o_zp, o_lo, o_hi = self._o
        run, threads = (_fused_pix_serial, 1) if serial else (_fused_pix, numba.get_num_threads())
        run(Q, direct, kh, kw, sh, sw, dh, dw, ho, wo, panel, self._integer, self.kexact,
                   split, pt, self._s_a, self.weights.scale, self.bias, self.epilogue.relu, kind,
                   o_scale, o_zp, o_lo, o_hi, f, q, i, threads)
        return res.reshape(nb, self.weights.n, ho, wo)


def qgemm(x, weights: QuantWeights, act: ActQuant, *, epilogue: Epilogue | None = None,
          mode: str = "mixed", out=None) -> np.ndarray:
    """Numba CPU fused op; see :mod:`aciq.kernels.reference` for the definition.

    Builds the weight panel on every call: hold a :class:`CpuQGemm` to reuse it.

    Examples
    --------
    >>> from aciq.kernels.spec import ActQuant, quantize_weights
    >>> w = quantize_weights(np.float32([[1.0, -1.0]]), bits=4)
    >>> a = ActQuant(scale=[0.5, 0.25], bits=8, signed=True)
    >>> qgemm(np.float32([[1.0, 1.0]]), w, a).tolist()
    [[0.0]]
    """
    epilogue = check_operands(x, weights, act, epilogue, mode)
    return CpuQGemm(weights, act, epilogue=epilogue, mode=mode).linear(x, out=out)


def qgemm_int32(x, weights: QuantWeights, act: ActQuant) -> np.ndarray:
    """Integer-mode int32 accumulators ``sum_k (q_a - z_a)(q_w - z_w[n])`` (bit-exact)."""
    check_operands(x, weights, act, None, "integer")
    return CpuQGemm(weights, act, mode="integer").linear(x, accumulator=True)
