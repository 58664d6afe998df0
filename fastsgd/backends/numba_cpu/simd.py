"""Float32 vectors for the products' register tiles: a Numba type and five intrinsics.

LLVM keeps a product's tile of ``out`` in registers only when the tile is values, not
memory: written as a small array, or as ``out`` itself, the tile is loaded and stored
at every step of k (nothing tells LLVM that it does not overlap ``a`` or ``b``), and
the loops did not vectorize at all.  A ``Vector`` is one LLVM ``<WIDTH x float>``
value, so a tile held in a few local ``Vector`` variables lives in vector registers
for the whole loop over k.

``WIDTH`` is 16 floats (one zmm register) where Numba compiles for AVX-512
(``numba_target``), else 8 (one ymm register; a narrower ISA splits it in two).
Offsets count float32 elements from the start of a C-contiguous array, as its
flat index does; nothing is bounds-checked: callers keep them in range.  Numba's disk
cache knows a function by its own file: after an edit here, the callers' cached code
(``gemm``'s) is stale until their cache files are removed.
"""
import numba
from llvmlite import ir
from numba import types
from numba.core import cgutils, errors
from numba.extending import intrinsic, models, register_model

from .. import numba_target  # noqa: F401  (the CPU features, set before anything compiles)


def vector_width(cpu_name, cpu_features, host_features):
    """Floats per vector: 16 when the code is compiled for AVX-512, else 8.

    ``cpu_features``: Numba's feature string (None when not set); ``host_features``:
    llvmlite's map of the host's features, used when neither a CPU name nor features
    were given (Numba then compiles for the host).
    """
    if cpu_features is not None:
        return 16 if "+avx512f" in cpu_features.split(",") else 8
    if cpu_name is None:
        return 16 if host_features.get("avx512f") else 8
    return 8


def _host_features():
    from llvmlite import binding
    try:
        return binding.get_host_cpu_features()
    except RuntimeError:
        return {}


WIDTH = vector_width(numba.config.CPU_NAME, numba.config.CPU_FEATURES, _host_features())


class Vector(types.Type):
    """WIDTH float32 lanes held as one LLVM vector value."""

    def __init__(self, width):
        self.width = width
        super().__init__(name=f"float32x{width}")


@register_model(Vector)
class _VectorModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, ir.VectorType(ir.FloatType(), fe_type.width))


VECTOR = Vector(WIDTH)
_LLVM_VECTOR = ir.VectorType(ir.FloatType(), WIDTH)


def _check_array(name, array):
    if not (isinstance(array, types.Array) and array.dtype == types.float32
            and array.layout == "C"):
        raise errors.TypingError(f"{name}: expected a C-contiguous float32 array, got {array}")


def _address(context, builder, array_type, array, offset):
    data = context.make_array(array_type)(context, builder, array).data
    return builder.gep(data, [offset])


@intrinsic
def vload(typingctx, array, offset):
    """The WIDTH floats of ``array`` from flat offset ``offset`` on."""
    _check_array("array", array)

    def codegen(context, builder, signature, args):
        address = _address(context, builder, signature.args[0], args[0], args[1])
        return builder.load(builder.bitcast(address, _LLVM_VECTOR.as_pointer()), align=4)
    return VECTOR(array, offset), codegen


@intrinsic
def vstore(typingctx, array, offset, vector):
    """Write ``vector`` to the WIDTH floats of ``array`` from flat offset ``offset`` on."""
    _check_array("array", array)

    def codegen(context, builder, signature, args):
        address = _address(context, builder, signature.args[0], args[0], args[1])
        builder.store(args[2], builder.bitcast(address, _LLVM_VECTOR.as_pointer()), align=4)
        return context.get_dummy_value()
    return types.none(array, offset, vector), codegen


@intrinsic
def vbroadcast(typingctx, array, offset):
    """The float at flat offset ``offset`` of ``array`` in every lane."""
    _check_array("array", array)

    def codegen(context, builder, signature, args):
        value = builder.load(_address(context, builder, signature.args[0], args[0], args[1]),
                             align=4)
        undefined = ir.Constant(_LLVM_VECTOR, ir.Undefined)
        lane0 = builder.insert_element(undefined, value, ir.Constant(ir.IntType(32), 0))
        zeros = ir.Constant(ir.VectorType(ir.IntType(32), WIDTH), [0] * WIDTH)
        return builder.shuffle_vector(lane0, undefined, zeros)
    return VECTOR(array, offset), codegen


@intrinsic
def vzero(typingctx):
    """WIDTH zeros."""
    def codegen(context, builder, signature, args):
        return ir.Constant(_LLVM_VECTOR, [0.0] * WIDTH)
    return VECTOR(), codegen


@intrinsic
def vfma(typingctx, x, y, acc):
    """x * y + acc lane by lane, rounded once (LLVM's ``fma``: one vfmadd instruction)."""
    if not all(isinstance(t, Vector) for t in (x, y, acc)):
        return None

    def codegen(context, builder, signature, args):
        fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_LLVM_VECTOR, [_LLVM_VECTOR] * 3),
            f"llvm.fma.v{WIDTH}f32")
        return builder.call(fma, args)
    return VECTOR(x, y, acc), codegen
