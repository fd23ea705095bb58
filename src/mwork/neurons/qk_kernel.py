"""How much one head's attention probabilities change when one Q or K channel is zeroed.

The exact Q/K importance (Eq. 8) needs, for every channel c of a head and query row i,

    out[c, i] = sum_j (P'_ij - P_ij)^2,   P'_ij = P_ij e^{w_ij} / sum_k P_ik e^{w_ik},

where w_ij = -(change of the score) has a closed form (``importance`` derives the inputs):

    Q channel c of head h:  delta_ij = U[i,c] s_ij + W[i,c] (A[i,c] X[j,c] + B[i,c] X[j,pc])
    K channel c:            delta_ij = U[j,c] s_ij + W[j,c] (A[j,c] X[i,c] + B[j,c] X[i,pc])
    w_ij = k0_i - (t_ij - cap tanh((s_ij - delta_ij) / cap))   with soft-capping,
         = k0_i - delta_ij                                     without,

with pc = partner[c] (the RoPE partner channel), ``s`` the pre-cap scores, ``t`` the capped
ones, X the other side's post-RoPE vectors (keys for Q, the head's queries for K), and k0_i
= delta at row i's most attended key: softmax ignores any per-row constant, and this one
keeps the sums below accurate. Keys j run over [lo[i], hi[i]) (causal mask and sliding
window). Each channel costs O(l^2), instead of a (l x d) @ (d x l) score matmul.

One pass per row accumulates sum P g, sum P^2 g, sum P^2 g^2 with g = expm1(w), which give
the result without forming P'. Rows where that formula could lose precision (large w,
cancellation, overflow) are redone exactly in double precision with a max-shift.

Two implementations with the same semantics: a small C kernel compiled on first use with the
system C compiler (cached under the mwork cache, its sha256 recorded when built and checked
before every load; rows split over one Python thread per torch thread, the GIL released), and a
pure torch version (any device; chunked over channels, memory O(chunk * l^2)). ``auto`` uses C
on CPU when a compiler is available, torch otherwise.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

# thresholds of the single-pass formula (per dtype): beyond them a row is redone exactly
_WMAX = {torch.float32: 30.0, torch.float64: 300.0}
_CANCEL = {torch.float32: 1e-3, torch.float64: 1e-7}

_C_SOURCE = r"""
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* compiled with -ffinite-math-only: test finiteness on the bits */
static inline int finite_bits(double x) { uint64_t b; memcpy(&b, &x, 8); return (b & 0x7ff0000000000000ull) != 0x7ff0000000000000ull; }

/* expm1 to a few ulp, written so that gcc vectorises it: x = k ln2 + r with |r| <= ln2/2,
   expm1(r) by a near-minimax polynomial, then 2^k (1 + expm1(r)) - 1. k comes from the
   round-to-nearest of one fma with a magic constant whose low mantissa bits then hold k + bias,
   so 2^k is that bit pattern shifted left. Only the lower clamp: w above the redo threshold
   (30, or 300 in double) gives garbage that the exact redo replaces. */
static inline float xexpm1f(float x) {
  x = fmaxf(x, -87.f);
  float y = fmaf(x, 1.44269504088896341f, 12583039.f); /* 1.5 * 2^23 + 127 */
  float k = y - 12583039.f;
  float r = fmaf(k, -0.693145751953125f, x);
  r = fmaf(k, -1.428606765330187e-06f, r);
  float q = fmaf(r, 0.0013882518978789449f, 0.00836651399731636f);
  q = fmaf(q, r, 0.04166720062494278f); q = fmaf(q, r, 0.1666654348373413f); q = fmaf(q, r, 0.4999999701976776f);
  float p = fmaf(q * r, r, r);
  uint32_t bits; memcpy(&bits, &y, 4); bits <<= 23; float t; memcpy(&t, &bits, 4);
  return fmaf(t, p, t - 1.f);
}
static inline double xexpm1d(double x) {
  x = fmax(x, -708.0);
  double y = fma(x, 1.4426950408889634, 6755399441056767.0); /* 1.5 * 2^52 + 1023 */
  double k = y - 6755399441056767.0;
  double r = fma(k, -6.93147180369123816490e-01, x);
  r = fma(k, -1.90821492927058770002e-10, r);
  double q = 1.0 / 6227020800.0;
  q = fma(q, r, 1.0 / 479001600.0); q = fma(q, r, 1.0 / 39916800.0); q = fma(q, r, 1.0 / 3628800.0);
  q = fma(q, r, 1.0 / 362880.0); q = fma(q, r, 1.0 / 40320.0); q = fma(q, r, 1.0 / 5040.0);
  q = fma(q, r, 1.0 / 720.0); q = fma(q, r, 1.0 / 120.0); q = fma(q, r, 1.0 / 24.0);
  q = fma(q, r, 1.0 / 6.0); q = fma(q, r, 0.5);
  double p = fma(q * r, r, r);
  uint64_t bits; memcpy(&bits, &y, 8); bits <<= 52; double t; memcpy(&t, &bits, 8);
  return fma(t, p, t - 1.0);
}
/* the same for |x| <= ln2/2 only: the polynomial alone, no range reduction (k = 0) */
static inline float xexpm1f_small(float x) {
  float q = fmaf(x, 0.0013882518978789449f, 0.00836651399731636f);
  q = fmaf(q, x, 0.04166720062494278f); q = fmaf(q, x, 0.1666654348373413f); q = fmaf(q, x, 0.4999999701976776f);
  return fmaf(q * x, x, x);
}
static inline double xexpm1d_small(double x) {
  double q = 1.0 / 6227020800.0;
  q = fma(q, x, 1.0 / 479001600.0); q = fma(q, x, 1.0 / 39916800.0); q = fma(q, x, 1.0 / 3628800.0);
  q = fma(q, x, 1.0 / 362880.0); q = fma(q, x, 1.0 / 40320.0); q = fma(q, x, 1.0 / 5040.0);
  q = fma(q, x, 1.0 / 720.0); q = fma(q, x, 1.0 / 120.0); q = fma(q, x, 1.0 / 24.0);
  q = fma(q, x, 1.0 / 6.0); q = fma(q, x, 0.5);
  return fma(q * x, x, x);
}

/* |x| <= 1: a longer near-minimax polynomial, still no range reduction (float only) */
static inline float xexpm1f_medium(float x) {
  float q = fmaf(x, 2.4760271116974764e-05f, 0.0002037028461927548f);
  q = fmaf(q, x, 0.001389550743624568f); q = fmaf(q, x, 0.008330309763550758f);
  q = fmaf(q, x, 0.04166626185178757f); q = fmaf(q, x, 0.1666671484708786f); q = fmaf(q, x, 0.5000000596046448f);
  return fmaf(q * x, x, x);
}
#define xexpm1d_medium xexpm1d

/* tanh(x) = expm1(2x) / (expm1(2x) + 2), saturated where tanh rounds to +-1 */
static inline float xtanhf(float x) { float e = xexpm1f(2.f * fminf(fmaxf(x, -20.f), 20.f)); return e / (e + 2.f); }
static inline double xtanhd(double x) { double e = xexpm1d(2.0 * fmin(fmax(x, -40.0), 40.0)); return e / (e + 2.0); }

/* exact redo of one row in double precision, shifted by the row maximum; P is recomputed from
   the scores t (its own log-sum-exp, so that it sums to 1 in double) */
static double redo_row(const double* w, const void* t_, int is_f32, int64_t l0, int64_t l1) {
  double mt = -DBL_MAX, zt = 0.0, m = -DBL_MAX, z = 0.0, acc = 0.0;
#define T_AT(j) (is_f32 ? (double)((const float*)t_)[j] : ((const double*)t_)[j])
  for (int64_t j = l0; j < l1; ++j) if (T_AT(j) > mt) mt = T_AT(j);
  for (int64_t j = l0; j < l1; ++j) zt += exp(T_AT(j) - mt);
  double lse = mt + log(zt);
  for (int64_t j = l0; j < l1; ++j) { double v = (T_AT(j) - lse) + w[j - l0]; if (v > m) m = v; }
  for (int64_t j = l0; j < l1; ++j) z += exp((T_AT(j) - lse) + w[j - l0] - m);
  double lz = m + log(z);
  for (int64_t j = l0; j < l1; ++j) {
    double lp = T_AT(j) - lse, x = w[j - l0] - lz;
    double d = x < 1.0 ? exp(lp) * expm1(x) : exp(lp + x) - exp(lp);
    acc += d * d;
  }
#undef T_AT
  return acc;
}

/* Rows are padded to a multiple of 16 keys (row stride ld, zeros beyond n): every row's loop
   runs over whole vectors from floor16(lo) to ceil16(hi), with no scalar tail. Keys outside
   [lo, hi) have p = 0 and add nothing (they may only trigger a needless exact redo). */
#define ROW_LOOP(T, EXPM1, WEIGHT, PRAGMA, TRACK)                                                     \
  _Pragma(PRAGMA)                                                                                     \
  for (int64_t j = j0; j < j1; ++j) {                                                                 \
    T w = WEIGHT;                                                                                     \
    T g = EXPM1(w), pj = pi[j], pg = pj * g;                                                          \
    a1 += pg; a2 += pj * pg; a3 += pg * pg;                                                           \
    TRACK                                                                                             \
  }
#define SIMD_MAX "omp simd reduction(+:a1,a2,a3) reduction(max:wmax)"
#define SIMD "omp simd reduction(+:a1,a2,a3)"
#define TRACK_MAX wmax = w > wmax ? w : wmax;

/* One (channel, row): the single-pass sums, or the exact double-precision redo. DELTA is the
   score change at key j, W_EXPR = k0 - DELTA written for fused multiply-adds, BOUND bounds
   |DELTA| over the row: when |k0| + BOUND is below the redo threshold the max of w need not be
   tracked. */
#define ROW(T, EXPM1, TANH, DELTA, W_EXPR, DELTA_D, BOUND)                                            \
  {                                                                                                   \
    int64_t j = top[i];                                                                               \
    T k0 = DELTA, a1 = 0, a2 = 0, a3 = 0, wmax = -FLT_MAX;                                            \
    if (cap > 0) {                                                                                    \
      k0 = ti[j] - cap * TANH((si[j] - k0) / cap);                                                    \
      ROW_LOOP(T, EXPM1, k0 - (ti[j] - cap * TANH((si[j] - (DELTA)) / cap)), SIMD_MAX, TRACK_MAX)      \
    } else {                                                                                          \
      T wb = (k0 < 0 ? -k0 : k0) + (BOUND); /* |w| <= wb on the whole row */                          \
      if (wb > wmax_ok) {                                                                             \
        ROW_LOOP(T, EXPM1, W_EXPR, SIMD_MAX, TRACK_MAX)                                               \
      } else if (wb > (T)1) {                                                                         \
        wmax = 0;                                                                                     \
        ROW_LOOP(T, EXPM1, W_EXPR, SIMD, )                                                            \
      } else if (wb > (T)0.3465) { /* small changes everywhere: expm1 needs no range reduction */     \
        wmax = 0;                                                                                     \
        ROW_LOOP(T, EXPM1##_medium, W_EXPR, SIMD, )                                                   \
      } else {                                                                                        \
        wmax = 0;                                                                                     \
        ROW_LOOP(T, EXPM1##_small, W_EXPR, SIMD, )                                                    \
      }                                                                                               \
    }                                                                                                 \
    T r = a1, q2 = sp2[i], val = a3 - 2 * r * a2 + r * r * q2;                                        \
    T bound = a3 + 2 * (r * a2 < 0 ? -r * a2 : r * a2) + r * r * q2;                                  \
    T res = val / ((1 + r) * (1 + r));                                                                \
    if (force_redo || !(wmax <= wmax_ok) || !finite_bits((double)res) || !(val >= cancel * bound)) {  \
      for (j = l0; j < l1; ++j) {                                                                     \
        double d = DELTA_D;                                                                           \
        wbuf[j - l0] = cap > 0 ? (double)ti[j] - cap * tanh(((double)si[j] - d) / cap) : d;           \
      }                                                                                               \
      double kk = wbuf[top[i] - l0];                                                                  \
      for (j = l0; j < l1; ++j) wbuf[j - l0] = kk - wbuf[j - l0];                                     \
      res = (T)redo_row(wbuf, ti, sizeof(T) == 4, l0, l1);                                            \
      ++redone;                                                                                       \
    }                                                                                                 \
    out[c * n + i] = res;                                                                             \
  }

/* smax[i] = max_j |s_ij| of the row; cmax (3, d): per-channel maxima of |coefficient| over the
   rows or keys (see each kernel) */
#define COMMON_ARGS(T)                                                                                \
  const T *s, const T *t, const T *p, const T *sp2, const T *lse, const int64_t *top,                 \
  const int64_t *lo, const int64_t *hi, int64_t n, int64_t ld, int64_t d, const int64_t *partner,     \
  T cap, T wmax_ok, T cancel, int force_redo, T *out, const int64_t *bounds, int64_t nparts,         \
  double *wbufs, const T *smax, const T *cmax

#define ABS(x) ((x) < 0 ? -(x) : (x))

/* Q channels of one head: A, B, U, W are (n, d) row-major (query-indexed), XT the keys' (d, ld)
   transpose, cmax[0] = max over keys of |X|. K channels: WAT = (W A)^T, WBT = (W B)^T and UT
   are (d, ld) (key-indexed), X the head's queries (n, d) row-major, cmax = max over keys of
   |U|, |W A|, |W B|. out is (d, n). */
#define KERNELS(SUF, T, EXPM1, TANH)                                                                  \
int64_t qchan_##SUF(COMMON_ARGS(T), const T *A, const T *B, const T *U, const T *W, const T *XT) {    \
  int64_t redone = 0;                                                                                 \
  _Pragma("omp parallel for schedule(static, 1) reduction(+:redone)")                                 \
  for (int64_t part = 0; part < nparts; ++part) {                                                     \
  double *wbuf = wbufs + part * n;                                                                    \
  for (int64_t b0 = bounds[part]; b0 < bounds[part + 1]; b0 += 8) {                                   \
    int64_t b1 = b0 + 8 < bounds[part + 1] ? b0 + 8 : bounds[part + 1];                               \
    for (int64_t c = 0; c < d; ++c) {                                                                 \
      const T *Xc = XT + c * ld, *Yc = XT + partner[c] * ld;                                          \
      T xm = cmax[c], ym = cmax[partner[c]];                                                          \
      for (int64_t i = b0; i < b1; ++i) {                                                             \
        const T *si = s + i * ld, *ti = t + i * ld, *pi = p + i * ld;                                 \
        int64_t l0 = lo[i], l1 = hi[i], j0 = l0 & ~(int64_t)15, j1 = (l1 + 15) & ~(int64_t)15;        \
        T u = U[i * d + c], a = A[i * d + c] * W[i * d + c], b = B[i * d + c] * W[i * d + c];        \
        double ud = U[i * d + c], wd = W[i * d + c], ad = A[i * d + c], bd = B[i * d + c];           \
        ROW(T, EXPM1, TANH, u * si[j] + a * Xc[j] + b * Yc[j],                                        \
            k0 - u * si[j] - a * Xc[j] - b * Yc[j],                                                   \
            ud * si[j] + wd * (ad * Xc[j] + bd * Yc[j]),                                              \
            ABS(u) * smax[i] + ABS(a) * xm + ABS(b) * ym)                                             \
      }                                                                                               \
    }                                                                                                 \
  }                                                                                                   \
  }                                                                                                   \
  return redone;                                                                                      \
}                                                                                                     \
int64_t kchan_##SUF(COMMON_ARGS(T), const T *WAT, const T *WBT, const T *UT, const T *X) {            \
  int64_t redone = 0;                                                                                 \
  _Pragma("omp parallel for schedule(static, 1) reduction(+:redone)")                                 \
  for (int64_t part = 0; part < nparts; ++part) {                                                     \
  double *wbuf = wbufs + part * n;                                                                    \
  for (int64_t b0 = bounds[part]; b0 < bounds[part + 1]; b0 += 8) {                                   \
    int64_t b1 = b0 + 8 < bounds[part + 1] ? b0 + 8 : bounds[part + 1];                               \
    for (int64_t c = 0; c < d; ++c) {                                                                 \
      const T *Ac = WAT + c * ld, *Bc = WBT + c * ld, *Uc = UT + c * ld;                              \
      T um = cmax[c], am = cmax[d + c], bm = cmax[2 * d + c];                                         \
      for (int64_t i = b0; i < b1; ++i) {                                                             \
        const T *si = s + i * ld, *ti = t + i * ld, *pi = p + i * ld;                                 \
        int64_t l0 = lo[i], l1 = hi[i], j0 = l0 & ~(int64_t)15, j1 = (l1 + 15) & ~(int64_t)15;        \
        T x = X[i * d + c], y = X[i * d + partner[c]];                                                \
        ROW(T, EXPM1, TANH, Uc[j] * si[j] + Ac[j] * x + Bc[j] * y,                                    \
            k0 - Uc[j] * si[j] - Ac[j] * x - Bc[j] * y,                                               \
            (double)Uc[j] * si[j] + (double)Ac[j] * x + (double)Bc[j] * y,                            \
            um * smax[i] + am * ABS(x) + bm * ABS(y))                                                 \
      }                                                                                               \
    }                                                                                                 \
  }                                                                                                   \
  }                                                                                                   \
  return redone;                                                                                      \
}

KERNELS(f32, float, xexpm1f, xtanhf)
KERNELS(f64, double, xexpm1d, xtanhd)

/* with OpenMP the row ranges run on the OpenMP pool torch already uses (same libgomp.so.1) */
int mwork_openmp(void) {
#ifdef _OPENMP
  return 1;
#else
  return 0;
#endif
}
"""

_FLAGS = [
    # no -ffast-math: it would link crtfastmath and flush denormals in the whole process
    "-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-ffinite-math-only", "-fno-signed-zeros",
    "-ffp-contract=fast", "-fopenmp-simd", "-shared", "-fPIC",
]
# -fopenmp first: the kernel then shares torch's OpenMP threads (torch loads libgomp.so.1, and the
# loader reuses it), so it never competes with them; without it, Python threads split the rows
_VARIANTS = (["-fopenmp"], [])

_lib: ctypes.CDLL | None = None
_lib_error: str | None = None
_lock = threading.Lock()


def _cpu_key() -> str:
    """Binaries use -march=native: key the cache by CPU so a shared cache never runs foreign code."""
    try:
        flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    except OSError:
        flags = ""
    return f"{platform.machine()}|{platform.processor()}|{flags}"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _hash_file(target: Path) -> Path:
    """Where the sha256 of a built library is recorded (beside it)."""
    return target.with_name(target.name + ".sha256")


def _verified(target: Path) -> bool:
    """True if ``target`` is the library this cache built: its bytes hash to the sha256 recorded
    when it was built. A library replaced in the cache folder (or one with no record) is not
    loaded; a mismatch is said, then the library is rebuilt."""
    record = _hash_file(target)
    if not target.exists():
        return False
    try:
        recorded = record.read_text().strip()
    except OSError:
        recorded = ""
    if recorded and recorded == _sha256(target):
        return True
    if recorded:
        warnings.warn(f"the cached Q/K kernel {target} does not match the sha256 recorded when it was built "
                      "(replaced or corrupted); not loading it, rebuilding")
    return False


def _compile(cc: str, flags: list[str], target: Path) -> None:
    """Compile the kernel to ``target`` and record its sha256; atomic: concurrent builders never
    load a half-written file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    src = target.with_suffix(f".{os.getpid()}.c")
    tmp = target.with_suffix(f".{os.getpid()}.so")
    record = _hash_file(target).with_suffix(f".{os.getpid()}.sha256")
    src.write_text(_C_SOURCE)
    try:
        proc = subprocess.run([cc, *flags, str(src), "-o", str(tmp), "-lm"], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"compiling the Q/K kernel failed: {proc.stderr.strip()[:500]}")
        record.write_text(_sha256(tmp) + "\n")
        tmp.replace(target)
        record.replace(_hash_file(target))
    finally:
        for f in (src, tmp, record):
            f.unlink(missing_ok=True)


def _build() -> ctypes.CDLL:
    from mwork.models.loading import cache_dir

    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise RuntimeError("no C compiler (gcc/cc) on PATH")
    errors = []
    for extra in _VARIANTS:
        flags = _FLAGS + extra
        key = hashlib.sha256("\n".join([_C_SOURCE, " ".join(flags), cc, _cpu_key()]).encode()).hexdigest()[:16]
        target = cache_dir() / "kernels" / f"qk_kernel_{key}.so"
        try:
            if not _verified(target):
                _compile(cc, flags, target)
                if not _verified(target):  # another process replaced it meanwhile: do not load what we cannot vouch for
                    raise RuntimeError(f"the Q/K kernel {target} changed while it was being built")
            lib = ctypes.CDLL(str(target))
        except (OSError, RuntimeError) as err:
            errors.append(str(err))
            continue
        for name in ("qchan_f32", "qchan_f64", "kchan_f32", "kchan_f64"):
            getattr(lib, name).restype = ctypes.c_int64
        lib.openmp = bool(lib.mwork_openmp())
        return lib
    raise RuntimeError("; ".join(errors))


def native_library() -> ctypes.CDLL | None:
    """The compiled kernel, built on first use; None (with the reason in ``native_error()``) if
    it cannot be built here (``MWORK_NO_NATIVE=1`` disables it)."""
    global _lib, _lib_error
    with _lock:
        if _lib is None and _lib_error is None:
            if os.environ.get("MWORK_NO_NATIVE"):
                _lib_error = "disabled by MWORK_NO_NATIVE"
            else:
                try:
                    _lib = _build()
                except Exception as err:  # no compiler, read-only cache, ...: use torch instead
                    _lib_error = str(err)
                    warnings.warn(f"the native Q/K kernel is unavailable ({err}); using the slower torch path")
        return _lib


def native_error() -> str | None:
    return _lib_error


def _split_rows(lo: torch.Tensor, hi: torch.Tensor, parts: int) -> list[tuple[int, int]]:
    """Contiguous row ranges of about equal work (keys per row vary with causality)."""
    work = (hi - lo).clamp(min=0).cumsum(0).double()
    total = float(work[-1]) if len(work) else 0.0
    bounds = [0]
    for k in range(1, parts):
        bounds.append(int(torch.searchsorted(work, total * k / parts)))
    bounds.append(len(lo))
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


_pool: ThreadPoolExecutor | None = None


def _padded(x: torch.Tensor, ld: int) -> torch.Tensor:
    """Copy of a (..., n) tensor with its last dimension padded by zeros to ``ld``."""
    out = torch.zeros(*x.shape[:-1], ld, dtype=x.dtype)
    out[..., : x.shape[-1]] = x
    return out


def _native_group(lib, kind, s, t, p, lse, lo, hi, A, B, U, W, X, partner, cap, force_redo, top, sp2, smax) -> torch.Tensor:
    global _pool
    dtype, (G, n, width), d = s.dtype, s.shape, partner.numel()
    ld = -(-n // 16) * 16
    if width == ld and s.is_contiguous() and t.is_contiguous() and p.is_contiguous():
        sp, tp, pp = s, t, p  # already padded by the caller
    else:
        sp = _padded(s[..., :n], ld)
        tp = sp if t is s else _padded(t[..., :n], ld)
        pp = _padded(p[..., :n], ld)
    sp2 = ((pp * pp).sum(-1) if sp2 is None else sp2).contiguous()
    top = (pp.argmax(-1) if top is None else top).to(torch.int64).contiguous()
    lse = lse.contiguous()
    lo, hi = lo.to(torch.int64).contiguous(), hi.to(torch.int64).contiguous()
    partner = partner.to(torch.int64).contiguous()
    if kind == "q":  # per-head (n, d) row coefficients, keys transposed
        coef = [x.contiguous() for x in (A, B, U, W)] + [_padded(X.T, ld)]
        cmax = X.abs().amax(0).expand(3, d).contiguous()
        fn = lib.qchan_f32 if dtype == torch.float32 else lib.qchan_f64
    else:  # key coefficients transposed (shared by the group's heads), per-head queries
        WA, WB = W * A, W * B
        coef = [_padded(x.T, ld) for x in (WA, WB, U)] + [X.contiguous()]
        cmax = torch.stack([U.abs().amax(0), WA.abs().amax(0), WB.abs().amax(0)]).contiguous()
        fn = lib.kchan_f32 if dtype == torch.float32 else lib.kchan_f64
    # (G, n) max |s| over each row, padding and masked keys included: still a bound
    smax = (torch.maximum(sp.amax(-1), -sp.amin(-1)) if smax is None else smax).contiguous()
    out = torch.empty(G, d, n, dtype=dtype)
    real = ctypes.c_float if dtype == torch.float32 else ctypes.c_double
    ptr = lambda x: ctypes.c_void_p(x.data_ptr())  # noqa: E731
    i64 = ctypes.c_int64
    parts = _split_rows(lo, hi, max(1, torch.get_num_threads()))
    bounds = torch.tensor([a for a, _ in parts] + [parts[-1][1]] if parts else [0], dtype=torch.int64)
    wbufs = torch.empty(max(1, len(parts)), n, dtype=torch.float64)

    def call(h: int, first: int, count: int) -> int:
        per_head = [c[h] if c.dim() == 3 else c for c in coef]
        return fn(
            ptr(sp[h]), ptr(tp[h]), ptr(pp[h]), ptr(sp2[h]), ptr(lse[h]), ptr(top[h]), ptr(lo), ptr(hi),
            i64(n), i64(ld), i64(d), ptr(partner), real(cap), real(_WMAX[dtype]), real(_CANCEL[dtype]),
            ctypes.c_int(int(force_redo)), ptr(out[h]), ptr(bounds[first:]), i64(count), ptr(wbufs[first]),
            ptr(smax[h]), ptr(cmax), *map(ptr, per_head),
        )

    for h in range(G):
        if not parts:
            out[h].zero_()
        elif lib.openmp or len(parts) == 1:  # the kernel splits the rows over OpenMP threads itself
            call(h, 0, len(parts))
        else:  # one Python thread per row range; ctypes releases the GIL
            if _pool is None or _pool._max_workers < len(parts):
                _pool = ThreadPoolExecutor(max_workers=len(parts), thread_name_prefix="mwork-qk")
            sum(_pool.map(lambda k: call(h, k, 1), range(len(parts))))
    return out


def _torch_group(kind, s, t, p, lse, lo, hi, A, B, U, W, X, partner, cap: float, chunk: int, top) -> torch.Tensor:
    """The same with torch ops, chunked over channels (memory O(chunk * n^2)). With w centred on
    each row's most attended key, P' - P = P expm1(w - log1p(sum_k P_k expm1(w_k))) involves no
    cancellation; chunks with a large w use the max-shifted log-sum-exp form instead."""
    G, n, _ = s.shape
    s, t, p = s[..., :n], t[..., :n], p[..., :n]  # drop any padding columns
    d = partner.numel()
    j = torch.arange(n, device=s.device)
    visible = (j[None, :] >= lo[:, None]) & (j[None, :] < hi[:, None])
    top = p.argmax(-1) if top is None else top
    out = torch.empty(G, d, n, dtype=s.dtype, device=s.device)
    for h in range(G):
        sh, th, ph = s[h], t[h], p[h]
        for c0 in range(0, d, chunk):
            cs = torch.arange(c0, min(d, c0 + chunk), device=s.device)
            pc = partner[cs]
            if kind == "q":  # (C, n, 1) row factors, (C, 1, n) key vectors
                a, b, u, w = (x[h][:, cs].T[:, :, None] for x in (A, B, U, W))
                delta = u * sh + w * (a * X[:, cs].T[:, None, :] + b * X[:, pc].T[:, None, :])
            else:  # (C, 1, n) key factors, (C, n, 1) query vectors
                a, b, u, w = (x[:, cs].T[:, None, :] for x in (A, B, U, W))
                delta = u * sh + w * (a * X[h][:, cs].T[:, :, None] + b * X[h][:, pc].T[:, :, None])
            if cap > 0:
                delta = th - cap * torch.tanh((sh - delta) / cap)
            wgt = delta.gather(-1, top[h][None, :, None].expand(len(cs), n, 1)) - delta  # w, centred
            wgt = wgt.masked_fill_(~visible, float("-inf"))
            if float(wgt.max()) <= _WMAX[s.dtype]:
                rho_m1 = (ph * torch.expm1(wgt)).sum(-1, keepdim=True)  # P'_j / P_j = e^w_j / (1 + rho_m1)
                diff = ph * torch.expm1(wgt - torch.log1p(rho_m1))
            else:  # large changes: max-shifted log-sum-exp, exact but less precise for tiny ones
                logp = (th - lse[h][:, None]).masked_fill(~visible, float("-inf"))
                lw = logp + wgt
                lw = lw - torch.logsumexp(lw, dim=-1, keepdim=True)  # log P'
                x = lw - logp
                diff = torch.where(x < 1, ph * torch.expm1(x), torch.exp(lw) - ph)
            out[h, cs] = diff.nan_to_num_(0.0).square_().sum(-1)
    return out


@dataclass(frozen=True, eq=False)
class GroupScores:
    """One KV group's attention before any channel is zeroed, what :func:`prob_change` compares to.

    ``s``, ``t``, ``p``: (G, n, n) pre-cap scores, capped scores (``t is s`` without capping) and
    probabilities (0 outside the visible keys), or (G, n, ld) padded with zero columns to ld = n
    rounded up to a multiple of 16 (what the native kernel uses as is); ``lse``: (G, n) log-sum-exp
    of ``t`` over the visible keys; ``lo``/``hi``: (n,) visible key range per row; ``cap``: the
    soft-cap (None: none). ``top`` (G, n) (each row's most attended key), ``sp2`` (G, n)
    (sum_j P_ij^2) and ``smax`` (G, n) (max_j |s_ij|, over all columns) may be given when already
    known."""

    s: torch.Tensor
    t: torch.Tensor
    p: torch.Tensor
    lse: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor
    cap: float | None = None
    top: torch.Tensor | None = None
    sp2: torch.Tensor | None = None
    smax: torch.Tensor | None = None


@dataclass(frozen=True, eq=False)
class ChannelChange:
    """The score change of zeroing each channel of ``kind`` (module docstring): "q" (channel c of
    head h): A, B, U, W (G, n, d) per query, X (n, d) keys; "k" (KV channel c): A, B, U, W (n, d)
    per key, X (G, n, d) queries; ``partner`` (d,): each channel's RoPE partner."""

    kind: str
    A: torch.Tensor
    B: torch.Tensor
    U: torch.Tensor
    W: torch.Tensor
    X: torch.Tensor
    partner: torch.Tensor


def prob_change(scores: GroupScores, change: ChannelChange, *, backend: str = "auto", chunk: int = 16,
                force_redo: bool = False) -> torch.Tensor:
    """``out[h, c, i] = sum_j (P'_ij - P_ij)^2`` for every head h of a KV group, channel c of
    ``change.kind`` ("q": channel c of head h; "k": KV channel c) and query row i (module
    docstring), from the group's ``scores`` before the change. ``backend``: "auto" | "native" |
    "torch"; ``chunk``: channels at once (torch); ``force_redo`` sends every row through the exact
    double-precision path (tests).
    """
    kind, s, lse, partner = change.kind, scores.s, scores.lse, change.partner
    if kind not in ("q", "k"):
        raise ValueError(f"kind must be 'q' or 'k', got {kind!r}")
    if backend not in ("auto", "native", "torch"):
        raise ValueError(f"backend must be 'auto', 'native' or 'torch', got {backend!r}")
    cap_value = float(scores.cap) if scores.cap else 0.0
    fits = s.device.type == "cpu" and s.dtype in _WMAX
    lib = native_library() if backend == "native" or (backend == "auto" and fits) else None
    if backend == "native" and (lib is None or not fits):
        raise RuntimeError(f"the native Q/K kernel is unavailable here: {native_error() or 'needs float32/64 CPU tensors'}")
    if not bool(torch.isfinite(lse).all()):  # NaN/inf scores: no meaningful answer, say so
        return torch.full((s.shape[0], partner.numel(), s.shape[1]), float("nan"), dtype=s.dtype, device=s.device)
    inputs = (kind, s, scores.t, scores.p, lse, scores.lo, scores.hi, change.A, change.B, change.U, change.W,
              change.X, partner, cap_value)
    if lib is not None:
        return _native_group(lib, *inputs, force_redo, scores.top, scores.sp2, scores.smax)
    return _torch_group(*inputs, chunk, scores.top)
