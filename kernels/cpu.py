"""Numba CPU backend of the fused clip-quantize-GEMM op (and its conv2d).

Public names (same signature as :mod:`aciq.kernels.reference`):

* ``qgemm(x, weights, act, *, epilogue=None, mode="mixed", out=None)``;
* ``qgemm_int32(x, weights, act)`` -> int32 accumulators of integer mode;
* ``CpuQGemm(weights, act, *, epilogue=None, mode="mixed", groups=1)``: the op
  with its weight panel prepared once (what layers and benchmarks call);
  ``.linear(x)`` and ``.conv2d(x, kernel_size, stride, padding, dilation)``.

Design (measured on a 2-core AMD EPYC / Zen 4, see ``benchmarks/bench_kernels_cpu.py``)
-----------------------------------------------------------------------------------------
One microkernel, :func:`aciq.kernels.cpu_kernels._micro`, computes ``C[r, j] += sum_k A[r, k] B[k, j]``
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

from .cpu_kernels import (EXACT, KBC, MB, OUT_ACC, OUT_CODE, OUT_FLOAT, fused, fused_pix, fused_pix_serial,
                          fused_serial, fused_taps, fused_taps_serial, quantize_nchw, quantize_nhwc)
from .conv import ConvGeometry
from .spec import (ActQuant, Epilogue, QuantWeights, check_accumulator, check_operands, check_plan, check_x,
                   unpack_codes)

__all__ = ["qgemm", "qgemm_int32", "qconv2d", "Plan", "CpuQGemm"]

# ------------------------------------------------------------------ host side
_DUMMY_X = np.zeros((1, 1), np.float32)
_DUMMY_Q = np.zeros((1, 1, 1, 1), np.float32)
_DUMMY_F = np.zeros((1, 1, 1), np.float32)
_DUMMY_I8 = np.zeros((1, 1, 1), np.int8)
_DUMMY_I32 = np.zeros((1, 1, 1), np.int32)
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
        self.epilogue = check_plan(weights, act, epilogue, mode, conv=kernel_size is not None)
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
        self.bias = self.epilogue.bias_or_zeros(n)
        integer = mode == "integer"
        bound = max(act.max_centered() * weights.max_centered(), 1)
        # float32 partial sums stay exact integers over at most `kexact` products
        self.kexact = max(1, EXACT // bound) if integer else 1 << 62
        self._integer = integer
        self._s_a = np.float32(act.scale[0])
        e = self.epilogue
        if e.out_bits is None:
            self._o = (np.float32(1.0), 0, 0, 0)
        else:
            lo, hi = e.out_range
            self._o = (np.float32(e.out_scale), e.out_zero_point, lo, hi)
        self._kind = OUT_FLOAT if e.out_bits is None else OUT_CODE

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
        dtype = np.dtype(np.int32) if out_kind == OUT_ACC else self.epilogue.out_dtype
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
        if out_kind == OUT_ACC:
            i = view
        elif out_kind == OUT_CODE:
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
        run, threads = (fused_serial, 1) if serial else (fused, numba.get_num_threads())
        run(src_conv, x2, Q, act.scale, act.zero_point, act.qmin, act.qmax,
               cg, kw, sh, sw, dh, dw, wo, panel, self._integer, self.kexact, split, m_total,
               p_out, self._s_a, w.scale, self.bias, self.epilogue.relu, out_kind,
               o_scale, o_zp, o_lo, o_hi, f, q, i, threads, mtile, KBC)
        return res

    def _check_acc(self, accumulator):
        check_accumulator(self.mode, accumulator)

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
        kind = OUT_ACC if accumulator else self._kind
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
        kind = OUT_ACC if accumulator else self._kind
        act = self.act
        hp, wp = h + 2 * ph, wd + 2 * pw
        alloc = np.zeros if (ph or pw) else np.empty
        if orient == "channels":
            Q = alloc((nb, hp, wp, c), np.float32)
            quantize_nhwc(x, act.scale, act.zero_point, act.qmin, act.qmax, self._integer,
                           ph, pw, Q)
            res = self._run(True, _DUMMY_X, Q, (cg, kw, sh, sw, dh, dw, wo), nb * ho * wo,
                            ho * wo, out, kind)
            return res.reshape(nb, self.weights.n, ho, wo)
        p_out = ho * wo
        serial = numba.get_num_threads() == 1 or 2 * nb * p_out * self.weights.k * self.weights.n \
            < SERIAL_FLOP
        if sh == 1 and sw == 1 and (kh > 1 or kw > 1) and 8 * (wp - wo) <= wo:
            # stride 1, at most 1/8 of extra columns: shifted GEMMs, no gather
            tail = (kw - 1) * dw
            Q3 = np.zeros((nb, c, hp * wp + tail), np.float32)
            quantize_nchw(x, act.scale, act.zero_point, act.qmin, act.qmax, self._integer, ph,
                           pw, Q3[:, :, :hp * wp].reshape(nb, c, hp, wp))
            pt = _pixel_tile(ho * wp)
            ntile = nb * -(-(ho * wp) // pt)
            split = 1 if serial else _n_split(ntile * self.groups, self._og, 8)
            res, f, q, i = self._out_arrays((nb, self.weights.n, p_out), out, kind)
            o_scale, o_zp, o_lo, o_hi = self._o
            run, threads = (fused_taps_serial, 1) if serial else (fused_taps,
                                                                    numba.get_num_threads())
            run(Q3, kh, kw, dh, dw, ho, wo, wp, self._panel("tnk"), self._integer, self.kexact,
                split, pt, self._s_a, self.weights.scale, self.bias, self.epilogue.relu, kind,
                o_scale, o_zp, o_lo, o_hi, f, q, i, threads)
            return res.reshape(nb, self.weights.n, ho, wo)
        Q = alloc((nb, c, hp, wp), np.float32)
        quantize_nchw(x, act.scale, act.zero_point, act.qmin, act.qmax, self._integer, ph, pw, Q)
        direct = kh == 1 and kw == 1 and sh == 1 and sw == 1 and ph == 0 and pw == 0
        panel = self._panel("nk")
        pt = _pixel_tile(p_out if direct else nb * p_out)
        ntile = nb * -(-p_out // pt) if direct else -(-nb * p_out // pt)
        split = 1 if serial else _n_split(ntile * self.groups, self._og, 8)
        res, f, q, i = self._out_arrays((nb, self.weights.n, p_out), out, kind)
        o_scale, o_zp, o_lo, o_hi = self._o
        run, threads = (fused_pix_serial, 1) if serial else (fused_pix, numba.get_num_threads())
        run(Q, direct, kh, kw, sh, sw, dh, dw, ho, wo, panel, self._integer, self.kexact,
                   split, pt, self._s_a, self.weights.scale, self.bias, self.epilogue.relu, kind,
                   o_scale, o_zp, o_lo, o_hi, f, q, i, threads)
        return res.reshape(nb, self.weights.n, ho, wo)


    def conv(self, x, geom: ConvGeometry, *, out=None, accumulator: bool = False):
        """The backend seam's conv call: :meth:`conv2d` with a checked :class:`ConvGeometry`."""
        return self.conv2d(x, stride=geom.stride, padding=geom.padding, dilation=geom.dilation, out=out,
                           accumulator=accumulator)


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


def qconv2d(x, weights: QuantWeights, act: ActQuant, geom: ConvGeometry, *, epilogue: Epilogue | None = None,
            mode: str = "mixed", accumulator: bool = False) -> np.ndarray:
    """Conv2d ``[N, C, H, W] -> [N, O, H', W']`` (``geom`` from :func:`aciq.kernels.conv.conv_geometry`)."""
    plan = CpuQGemm(weights, act, epilogue=epilogue, mode=mode, groups=geom.groups, kernel_size=geom.kernel_size)
    return plan.conv(x, geom, accumulator=accumulator)


Plan = CpuQGemm
"""The backend seam's plan class (``linear(x)``, ``conv(x, geom)``): see :mod:`aciq.kernels.api`."""
