"""Numba CPU backend of the fused clip-quantize-GEMM op (and its conv2d).

Public names (same signature as :mod:`aciq.kernels.reference`):

* ``qgemm(x, weights, act, *, epilogue=None, mode="mixed", out=None)``;
* ``qgemm_int32(x, weights, act)`` -> int32 accumulators of integer mode;
* ``CpuQGemm(weights, act, *, epilogue=None, mode="mixed", groups=1)``: the op
  with its weight panel prepared once (what layers and benchmarks call);
  ``.linear(x)`` and ``.conv2d(x, kernel_size, stride, padding, dilation)``.

Design (measured on a 2-core AMD EPYC / Zen 4, see ``benchmarks/bench_kernels_cpu.py``)
-----------------------------------------------------------------------------------------
Weights are prepared once into a panel ``B[g, k, n] = q_w - z_w[n]`` of float32
(small exact integers; contiguous along ``n`` so the inner loop vectorises).
One parallel loop runs over tasks = (M-tile of 64 rows, group, N-range); a task

1. fills a ``64 x 256`` scratch tile ``A`` with the quantized activations of its
   rows for one K-block: ``q_a - z_a`` (integer mode) or ``(q_a - z_k) s_k``
   (mixed mode). For ``linear`` the float32 input is clipped and quantized right
   here, once per M-tile and K-block (not once per output column); for conv the
   input was quantized once per element into a zero-padded NHWC tensor of codes
   (so each input value is quantized once, not ``kh * kw`` times) and the tile
   is gathered from it (implicit GEMM: the im2col matrix never exists);
2. multiplies it into a float32 tile ``C`` with an 8-row x 4-k register-blocked
   microkernel whose inner loop over ``n`` LLVM vectorises (FMA contraction is
   allowed in this function only);
3. in integer mode, after every K-block, moves ``C`` into an int32 accumulator.
   Every partial sum is an integer of magnitude at most
   ``256 * max|q_a - z_a| * max|q_w - z_w| <= 256 * 255 * 255 < 2**24``, so the
   float32 arithmetic is exact and the int32 accumulators equal the integer
   reference bit for bit (floats are used because the CPU's FP32 FMA lanes are
   what LLVM vectorises well; the K-block is shortened if a bound needs it);
4. applies the epilogue (fastmath off, the same two roundings as the CUDA
   backend) and writes float32, codes or int32 accumulators.

Quantization always runs with fastmath off (IEEE float32 division, round half
to even) through :func:`aciq.kernels._scalar.quantize_code`, the helper the CUDA
backend uses too.

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
from .spec import ActQuant, Epilogue, QuantWeights, check_operands, unpack_codes

__all__ = ["qgemm", "qgemm_int32", "CpuQGemm", "TILE"]

MB = 64  # rows of an M-tile (one task)
KB = 256  # K-block of the scratch tile
NB = 128  # columns per microkernel call
TILE = (MB, KB, NB)
_EXACT = 1 << 24  # float32 represents every integer of magnitude <= 2**24

_OUT_FLOAT, _OUT_CODE, _OUT_ACC = 0, 1, 2


# ------------------------------------------------------------ scratch fill
@njit(cache=True)
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


@njit(parallel=True, cache=True)
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


@njit(cache=True)
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
@njit(cache=True, fastmath={"contract"})
def _micro(A, mb, kb, Bg, k0, n0, nb, C, c0):
    """C[:mb, c0:c0+nb] += A[:mb, :kb] @ Bg[k0:k0+kb, n0:n0+nb].

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
        k = 0
        while k + 3 < kb:
            a00, a01, a02, a03 = A[i + 0, k], A[i + 0, k + 1], A[i + 0, k + 2], A[i + 0, k + 3]
            a10, a11, a12, a13 = A[i + 1, k], A[i + 1, k + 1], A[i + 1, k + 2], A[i + 1, k + 3]
            a20, a21, a22, a23 = A[i + 2, k], A[i + 2, k + 1], A[i + 2, k + 2], A[i + 2, k + 3]
            a30, a31, a32, a33 = A[i + 3, k], A[i + 3, k + 1], A[i + 3, k + 2], A[i + 3, k + 3]
            a40, a41, a42, a43 = A[i + 4, k], A[i + 4, k + 1], A[i + 4, k + 2], A[i + 4, k + 3]
            a50, a51, a52, a53 = A[i + 5, k], A[i + 5, k + 1], A[i + 5, k + 2], A[i + 5, k + 3]
            a60, a61, a62, a63 = A[i + 6, k], A[i + 6, k + 1], A[i + 6, k + 2], A[i + 6, k + 3]
            a70, a71, a72, a73 = A[i + 7, k], A[i + 7, k + 1], A[i + 7, k + 2], A[i + 7, k + 3]
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
            a00 = A[i + 0, k]
            a10 = A[i + 1, k]
            a20 = A[i + 2, k]
            a30 = A[i + 3, k]
            a40 = A[i + 4, k]
            a50 = A[i + 5, k]
            a60 = A[i + 6, k]
            a70 = A[i + 7, k]
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
        k = 0
        while k + 3 < kb:
            a00, a01, a02, a03 = A[i, k], A[i, k + 1], A[i, k + 2], A[i, k + 3]
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
            a00 = A[i, k]
            b0 = Bg[k0 + k, n0:n0 + nb]
            for j in range(nb):
                r0[j] = r0[j] + a00 * b0[j]
            k += 1
        i += 1


# ----------------------------------------------------------------- epilogue
@njit(cache=True)
def _epilogue_tile(C, Ci, integer, mb, m0, p_out, n_first, ncols, s_a, w_scale, bias, relu,
                   out_kind, o_scale, o_zp, o_lo, o_hi, out_f, out_q, out_i):
    """Write rows m0..m0+mb, channels n_first.. of the 3-D output [B, N, P]."""
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
            if out_kind == _OUT_ACC:
                out_i[b, n, p] = Ci[i, jj]
                continue
            if integer:
                y = np.float32(np.float32(Ci[i, jj]) * sa_ws)
            else:
                y = np.float32(C[i, jj] * ws)
            y = np.float32(y + bs)
            if relu and y < np.float32(0.0):
                y = np.float32(0.0)
            if out_kind == _OUT_CODE:
                out_q[b, n, p] = np.int8(quantize_code(y, o_scale, o_zp, o_lo, o_hi))
            else:
                out_f[b, n, p] = y


# ------------------------------------------------------------- fused driver
@njit(parallel=True, cache=True)
def _fused(src_conv, x, Q, a_scale, a_zp, a_lo, a_hi, cg, kw, sh, sw, dh, dw, wo,
           Bp, integer, kblock, n_split, m_total, p_out,
           s_a, w_scale, bias, relu, out_kind, o_scale, o_zp, o_lo, o_hi, out_f, out_q, out_i):
    groups = Bp.shape[0]
    hp, wp, nc = Q.shape[1], Q.shape[2], Q.shape[3]
    Qf = Q.reshape(Q.size)
    kg = Bp.shape[1]
    og = Bp.shape[2]
    nmt = (m_total + MB - 1) // MB
    chunk = (og + n_split - 1) // n_split
    chunk = ((chunk + 15) // 16) * 16
    ntask = nmt * groups * n_split
    for t in prange(ntask):
        mt = t // (groups * n_split)
        rem = t - mt * (groups * n_split)
        g = rem // n_split
        s = rem - g * n_split
        m0 = mt * MB
        mb = min(MB, m_total - m0)
        j0 = s * chunk
        j1 = min(og, j0 + chunk)
        if j0 < j1:
            ncols = j1 - j0
            A = np.empty((MB, kblock), np.float32)
            C = np.zeros((MB, ncols), np.float32)
            Ci = np.zeros((MB, ncols), np.int32)
            Bg = Bp[g]
            for k0 in range(0, kg, kblock):
                kb = min(kblock, kg - k0)
                if src_conv:
                    _fill_conv(Qf, hp, wp, nc, m0, mb, k0, kb, g, cg, kw, sh, sw, dh, dw, wo,
                               p_out, A)
                else:
                    _fill_linear(x, m0, mb, k0, kb, a_scale, a_zp, a_lo, a_hi, integer, A)
                for n0 in range(j0, j1, NB):
                    _micro(A, mb, kb, Bg, k0, n0, min(NB, j1 - n0), C, n0 - j0)
                if integer:
                    for i in range(mb):
                        for j in range(ncols):
                            Ci[i, j] += np.int32(C[i, j])
                            C[i, j] = np.float32(0.0)
            _epilogue_tile(C, Ci, integer, mb, m0, p_out, g * og + j0, ncols, s_a, w_scale, bias,
                           relu, out_kind, o_scale, o_zp, o_lo, o_hi, out_f, out_q, out_i)


# ------------------------------------------------------------------ host side
_DUMMY_X = np.zeros((1, 1), np.float32)
_DUMMY_Q = np.zeros((1, 1, 1, 1), np.float32)
_DUMMY_F = np.zeros((1, 1, 1), np.float32)
_DUMMY_I8 = np.zeros((1, 1, 1), np.int8)
_DUMMY_I32 = np.zeros((1, 1, 1), np.int32)


def _n_split(tasks_m: int, og: int) -> int:
    threads = numba.get_num_threads()
    if tasks_m >= 2 * threads:
        return 1
    want = -(-2 * threads // tasks_m)
    return max(1, min(want, -(-og // 32)))


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
        Needed for a conv panel (its K is reordered to (ki, kj, c)).

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
        wc = unpack_codes(weights).astype(np.int32) - weights.zero_point[:, None]
        if kernel_size is None:
            if self.groups != 1:
                raise ValueError("groups > 1 needs kernel_size (a conv panel)")
            panel = wc.T.astype(np.float32)[None]
            self.kernel_size = None
        else:
            kh, kw = (int(v) for v in kernel_size)
            if k % (kh * kw):
                raise ValueError(f"weights K={k} is not a multiple of kh*kw={kh * kw}")
            cg = k // (kh * kw)
            # [O, cg, kh, kw] -> [G, kh, kw, cg, og] -> [G, kh*kw*cg, og]
            w4 = wc.reshape(self.groups, og, cg, kh, kw).transpose(0, 3, 4, 2, 1)
            panel = w4.reshape(self.groups, kh * kw * cg, og).astype(np.float32)
            self.kernel_size = (kh, kw)
        self.panel = np.ascontiguousarray(panel)
        self.epilogue = Epilogue() if epilogue is None else epilogue
        if not isinstance(self.epilogue, Epilogue):
            raise ValueError(f"epilogue must be an Epilogue or None, got {type(epilogue).__name__}")
        self.bias = self.epilogue.bias_or_zeros(n)
        if mode not in ("integer", "mixed"):
            raise ValueError(f"mode must be one of ('integer', 'mixed'), got {mode!r}")
        if mode == "integer" and not act.is_per_tensor:
            raise ValueError("mode='integer' needs a per-tensor act scale and zero_point; use mode='mixed'")
        bound = max(act.max_centered() * weights.max_centered(), 1)
        self.kblock = max(1, min(KB, _EXACT // bound)) if mode == "integer" else KB
        e = self.epilogue
        if e.out_bits is None:
            self._o = (np.float32(1.0), 0, 0, 0)
        else:
            lo, hi = e.out_range
            self._o = (np.float32(e.out_scale), e.out_zero_point, lo, hi)

    # -------------------------------------------------------------- helpers
    def _out_arrays(self, bshape, out, out_kind):
        """Allocate (or check) the result and the three 3-D views the kernel writes."""
        b, n, p = bshape
        if out_kind == _OUT_ACC:
            dtype = np.dtype(np.int32)
        else:
            dtype = self.epilogue.out_dtype
        shape = (b, n) if p == 0 else (b, n, p)
        if out is None:
            res = np.empty(shape if p else (b, n), dtype)
        else:
            if not isinstance(out, np.ndarray):
                raise ValueError(f"out must be a numpy array, got {type(out).__name__}")
            if out.dtype != dtype or out.size != b * n * max(p, 1) or not out.flags["C_CONTIGUOUS"] \
                    or not out.flags["WRITEABLE"]:
                raise ValueError(f"out must be a writeable C-contiguous {dtype} array of "
                                 f"{b * n * max(p, 1)} elements, got {out.dtype} {out.shape}")
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
        integer = self.mode == "integer"
        g = self.groups
        nmt = -(-m_total // MB)
        split = _n_split(nmt * g, self.panel.shape[2])
        bshape = (m_total, w.n, 0) if p_out == 1 and not src_conv else (m_total // p_out, w.n, p_out)
        res, f, q, i = self._out_arrays(bshape, out, out_kind)
        o_scale, o_zp, o_lo, o_hi = self._o
        _fused(src_conv, x2, Q, act.scale, act.zero_point, act.qmin, act.qmax,
               cg, kw, sh, sw, dh, dw, wo, self.panel, integer, self.kblock, split, m_total,
               p_out, np.float32(act.scale[0]), w.scale, self.bias, self.epilogue.relu, out_kind,
               o_scale, o_zp, o_lo, o_hi, f, q, i)
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
        check_operands(x, self.weights, self.act, self.epilogue, self.mode)
        x = np.asarray(x)
        kind = _OUT_ACC if accumulator else (_OUT_FLOAT if self.epilogue.out_bits is None else _OUT_CODE)
        return self._run(False, x, _DUMMY_Q, (1, 1, 1, 1, 1, 1, 1), x.shape[0], 1, out, kind)

    def conv2d(self, x, *, stride=(1, 1), padding=(0, 0), dilation=(1, 1), out=None,
               accumulator: bool = False):
        """``y[N, O, H', W']`` for ``x[N, C, H, W]`` (float32, C-contiguous)."""
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
        integer = self.mode == "integer"
        Q = np.zeros((nb, h + 2 * ph, wd + 2 * pw, c), np.float32)
        _quantize_nhwc(x, self.act.scale, self.act.zero_point, self.act.qmin, self.act.qmax,
                       integer, ph, pw, Q)
        kind = _OUT_ACC if accumulator else (_OUT_FLOAT if self.epilogue.out_bits is None else _OUT_CODE)
        res = self._run(True, _DUMMY_X, Q, (cg, kw, sh, sw, dh, dw, wo), nb * ho * wo, ho * wo,
                        out, kind)
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
