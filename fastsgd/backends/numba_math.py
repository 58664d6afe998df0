"""Branch-free float32 exp, log, sigmoid and tanh for the Numba backend's compiled loops.

``math.exp`` and ``math.tanh`` in an ``@njit`` loop are libm calls, one element at a
time: LLVM cannot vectorise them without a vector math library, and tanh ran at
~20 ns an element (0.04x NumPy).  These are plain float32 arithmetic (the algorithms
of the C backend's ``csrc/pointwise.c``), so a loop over them vectorises.  The one
steps arithmetic cannot do, making the power of two an integer exponent names and
reading a float's exponent, are bit casts (``_float32_from_bits``, ``_bits_of_float32``).

Every constant is a float32, so that no step is promoted to float64.  Callers compile
without ``reassoc`` fastmath (``FASTMATH``): it would let LLVM fold the rounding
``(t + ROUND) - ROUND`` to ``t`` and merge the two-part ``ln 2`` reduction.  Numba's
on-disk cache knows a function by its own file only: after an edit here, the callers'
cached code (``numba_cpu``'s) is stale until their cache files are removed.
"""
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from . import numba_target  # noqa: F401  (the CPU features, set before anything compiles)

#: fastmath flags for loops that call these functions: contraction into FMAs only.
FASTMATH = {"contract"}

_F = np.float32
LOG2E = _F(1.44269504088896341)
LN2_HI = _F(0.693145751953125)        # ln 2 to 12 significant bits: n * LN2_HI is exact
LN2_LO = _F(1.42860682030941723e-6)   # ln 2 - LN2_HI
ROUND = _F(12582912.0)                # 1.5 * 2^23: (t + ROUND) - ROUND rounds t
EXP_FLOOR, EXP_ZERO = _F(-150.0), _F(-104.0)
C7, C6, C5, C4, C3 = _F(1 / 5040), _F(1 / 720), _F(1 / 120), _F(1 / 24), _F(1 / 6)
#: tanh(a) = a + a^3 P(a^2) below TANH_SMALL, P fitted for relative error (csrc/pointwise.c).
TANH_SMALL = _F(0.625)
P4, P3, P2 = _F(-5.704977083951235e-3), _F(2.0639076828956604e-2), _F(-5.373971164226532e-2)
P1, P0 = _F(1.3331441581249237e-1), _F(-3.333328068256378e-1)
ZERO, HALF, ONE, TWO = _F(0.0), _F(0.5), _F(1.0), _F(2.0)
SQRT2 = _F(1.41421356237309505)
#: ln m = 2 atanh(t), t = (m - 1) / (m + 1): 2t (1 + t^2/3 + t^4/5 + t^6/7 + t^8/9).
A9, A7, A5, A3 = _F(1 / 9), _F(1 / 7), _F(1 / 5), _F(1 / 3)


@intrinsic
def _float32_from_bits(typingctx, bits):
    """The float32 whose IEEE-754 bits are the low 32 bits of the integer ``bits``."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        low = args[0]
        if bits.bitwidth > 32:
            low = builder.trunc(low, ir.IntType(32))
        return builder.bitcast(low, ir.FloatType())
    return types.float32(bits), codegen


@intrinsic
def _bits_of_float32(typingctx, x):
    """The IEEE-754 bits of the float32 ``x``, as an int32."""
    if not isinstance(x, types.Float) or x.bitwidth != 32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.int32(x), codegen


@njit(inline="always")
def _power_of_two(e):
    """2 ** e as a float32, for an integer e in [-126, 127]."""
    return _float32_from_bits((e + 127) << 23)


@njit(inline="always", fastmath=FASTMATH, error_model="numpy")
def exp_nonpos(x):
    """exp(x) for a float32 x <= 0 (or NaN), within about 1 ulp; 0 below -104.

    x = n ln2 + r with n an integer and |r| <= ln2 / 2; exp(r) by its Taylor series
    to r^7 (error < 6e-9); 2^n as the product of two powers of two, so that the result
    underflows gradually.
    """
    t = x * LOG2E
    t = t if t > EXP_FLOOR else EXP_FLOOR       # also NaN: n stays an integer >= -150
    n = (t + ROUND) - ROUND
    r = (x - n * LN2_HI) - n * LN2_LO           # NaN stays NaN
    p = ((((((C7 * r + C6) * r + C5) * r + C4) * r + C3) * r + HALF) * r + ONE) * r + ONE
    e = np.int32(n)
    half = e >> 1
    y = p * _power_of_two(half) * _power_of_two(e - half)
    return ZERO if x < EXP_ZERO else y


@njit(inline="always", fastmath=FASTMATH, error_model="numpy")
def log_pos(x):
    """ln x for a positive normal float32 x, within about 2 ulp; NaN for NaN and +Inf.

    x = 2^e m with m in (sqrt(1/2), sqrt(2)] (the exponent and the mantissa read from
    its bits); ln m = 2 atanh(t) = 2t (1 + t^2/3 + ... + t^8/9), t = (m - 1) / (m + 1),
    |t| <= 0.172 (the next term is below 3e-9 of the sum); e ln 2 added in two parts.
    Zero, negative and subnormal x give garbage (callers pass x >= 1: a softmax's sum).
    """
    bits = _bits_of_float32(x)
    e = (bits >> 23) - 127
    m = _float32_from_bits((bits & 0x7FFFFF) | 0x3F800000)     # [1, 2)
    big = m > SQRT2
    m = m * HALF if big else m
    e = e + 1 if big else e
    t = (m - ONE) / (m + ONE)
    t2 = t * t
    p = (((A9 * t2 + A7) * t2 + A5) * t2 + A3) * t2
    ln_m = TWO * t + TWO * t * p
    n = np.float32(e)
    return (n * LN2_HI + (ln_m + n * LN2_LO)) + (x - x)         # x - x: NaN for NaN, Inf


@njit(inline="always", fastmath=FASTMATH, error_model="numpy")
def sigmoid(v):
    """1 / (1 + exp(-v)) as exp(min(v, 0)) / (1 + exp(-|v|)): never overflows."""
    e = exp_nonpos(-abs(v))
    return (ONE if v >= ZERO else e) / (ONE + e)


@njit(inline="always", fastmath=FASTMATH, error_model="numpy")
def tanh(v):
    """tanh(v) within about 2 ulp relative; exactly +-1 for |v| > 8.7; odd, -0.0 kept.

    With a = |v|: a + a^3 P(a^2) below TANH_SMALL, else (1 - e) / (1 + e) with
    e = exp(-2a) <= 0.29; the sign of v put back at the end.
    """
    a = abs(v)
    a2 = a * a
    p = (((P4 * a2 + P3) * a2 + P2) * a2 + P1) * a2 + P0
    near_zero = a + a * a2 * p
    e = exp_nonpos(-TWO * a)
    far = (ONE - e) / (ONE + e)
    return np.float32(np.copysign(near_zero if a < TANH_SMALL else far, v))
