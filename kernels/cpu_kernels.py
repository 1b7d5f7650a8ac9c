"""Compiled kernels of the Numba CPU backend (see :mod:`aciq.kernels.cpu` for the design and the host side).

Everything here is ``@njit`` (``cache=True``, ``error_model="numpy"``: no zero-divisor checks, which block
vectorisation; the scales are validated ``> 0`` on the host) or a constant the kernels read at compile time.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._scalar import quantize_code

MB = 256  # most rows of an M-tile (one task of the channels orientation)
KB = 256  # K-block of the pixels orientation
KBC = 64  # K-block of the channels orientation
NB = 512  # columns per microkernel call (long inner loops amortise its set-up)
EXACT = 1 << 24  # float32 represents every integer of magnitude <= 2**24

OUT_FLOAT, OUT_CODE, OUT_ACC = 0, 1, 2


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
def quantize_nhwc(x, a_scale, a_zp, a_lo, a_hi, integer, pt, pl, Q):
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
            if out_kind == OUT_ACC:
                out_i[b, n, p] = acc
                continue
            y = _epi_value(C[i, jj], acc, integer, sa_ws, ws, bs, relu)
            if out_kind == OUT_CODE:
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
        if out_kind == OUT_ACC:
            ci = Ci[r, col0:col0 + pb]
            dst_i = out_i[b, n, p0:p0 + pb]
            for j in range(pb):
                dst_i[j] = np.int32(ci[j] + np.int32(cr[j]))
        elif out_kind == OUT_CODE:
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
def fused(src_conv, x, Q, a_scale, a_zp, a_lo, a_hi, cg, kw, sh, sw, dh, dw, wo,
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
    """One task of :func:`fused` (scratch ``A``, ``C``, ``Ci`` owned by the calling thread)."""
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
def fused_pix(Q, direct, kh, kw, sh, sw, dh, dw, ho, wo, Wt, integer, kexact, n_split, pt,
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
    """One task of :func:`fused_pix` (scratch owned by the calling thread)."""
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
def fused_taps(Q3, kh, kw, dh, dw, ho, wo, wp, Wtap, integer, kexact, n_split, pt,
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
    """One task of :func:`fused_taps`."""
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
fused_serial = njit(cache=True, error_model="numpy")(fused.py_func)
fused_pix_serial = njit(cache=True, error_model="numpy")(fused_pix.py_func)
fused_taps_serial = njit(cache=True, error_model="numpy")(fused_taps.py_func)


@njit(parallel=True, cache=True, error_model="numpy")
def quantize_nchw(x, a_scale, a_zp, a_lo, a_hi, integer, pt, pl, Q):
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
