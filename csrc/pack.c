/* pack.c -- the products' packing (gemm.c): B's panels, and the memory they are packed into.
 *
 * The A panels are packed by each instruction set's own pack_a (gemm_kernel.h), since
 * their height is the micro-kernel's tile; B's panels take their width as an argument
 * and are packed here, multiversioned with FS_CLONES like the elementwise kernels.
 */
#define _POSIX_C_SOURCE 200112L /* posix_memalign */

#include <stdlib.h>
#include <string.h>

#include "internal.h"

typedef float v8sf __attribute__((vector_size(32)));
typedef int32_t v8si __attribute__((vector_size(32)));

/* ------------------------------------------------------------------ B panels */

/* dst[k * ld_dst + j] = src[j * ld_src + k] for j, k < 8: an 8 x 8 transpose in
 * registers, in three rounds of two-input shuffles (pairs of rows, pairs of pairs,
 * 128-bit halves). */
FS_INLINE void transpose_8x8(float *restrict dst, int64_t ld_dst, const float *restrict src,
                             int64_t ld_src)
{
    const v8si PAIRS_LO = {0, 8, 1, 9, 4, 12, 5, 13}, PAIRS_HI = {2, 10, 3, 11, 6, 14, 7, 15};
    const v8si QUADS_LO = {0, 1, 8, 9, 4, 5, 12, 13}, QUADS_HI = {2, 3, 10, 11, 6, 7, 14, 15};
    const v8si HALVES_LO = {0, 1, 2, 3, 8, 9, 10, 11}, HALVES_HI = {4, 5, 6, 7, 12, 13, 14, 15};
    v8sf r[8], t[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++)
        memcpy(&r[i], src + i * ld_src, sizeof r[i]);
#pragma GCC unroll 4
    for (int i = 0; i < 8; i += 2) { /* t[i]: k = 0,1 | 4,5 of rows i, i+1 */
        t[i] = __builtin_shuffle(r[i], r[i + 1], PAIRS_LO);
        t[i + 1] = __builtin_shuffle(r[i], r[i + 1], PAIRS_HI);
    }
#pragma GCC unroll 2
    for (int i = 0; i < 8; i += 4) { /* r[i + k]: k = k | k+4 of rows i .. i+3 */
        r[i] = __builtin_shuffle(t[i], t[i + 2], QUADS_LO);
        r[i + 1] = __builtin_shuffle(t[i], t[i + 2], QUADS_HI);
        r[i + 2] = __builtin_shuffle(t[i + 1], t[i + 3], QUADS_LO);
        r[i + 3] = __builtin_shuffle(t[i + 1], t[i + 3], QUADS_HI);
    }
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) { /* t[k]: k of rows 0 .. 7 */
        t[i] = __builtin_shuffle(r[i], r[i + 4], HALVES_LO);
        t[i + 4] = __builtin_shuffle(r[i], r[i + 4], HALVES_HI);
    }
#pragma GCC unroll 8
    for (int k = 0; k < 8; k++)
        memcpy(dst + k * ld_dst, &t[k], sizeof t[k]);
}

/* B (see internal.h) as one panel of nr columns.  A row-major B is copied row by row;
 * B = w.T is transposed 8 x 8 at a time.   bp (kc * nr) floats. */
FS_CLONES void pack_b_panel(float *restrict bp, view B, int64_t p0, int64_t kc,
                                   int64_t j0, int64_t n, int64_t nr)
{
    if (B.cs == 1) {
        for (int64_t k = 0; k < kc; k++) {
            memcpy(bp + k * nr, B.p + (p0 + k) * B.rs + j0, (size_t)n * sizeof(float));
            for (int64_t j = n; j < nr; j++)
                bp[k * nr + j] = 0.0f;
        }
        return;
    }
    /* B = w.T: column j of B is row j0 + j of w, contiguous in k.  Full 8 x 8 blocks
     * are transposed in registers, the rest element by element. */
    const float *w = B.p + j0 * B.cs + p0;
    const int64_t n8 = n - n % 8, kc8 = kc - kc % 8;
    for (int64_t j = 0; j < n8; j += 8)
        for (int64_t k = 0; k < kc8; k += 8)
            transpose_8x8(bp + k * nr + j, nr, w + j * B.cs + k, B.cs);
    for (int64_t j = 0; j < nr; j++) {
        const int64_t k_start = j < n8 ? kc8 : 0; /* the depths not done above */
        for (int64_t k = k_start; k < kc; k++)
            bp[k * nr + j] = j < n ? w[j * B.cs + k] : 0.0f;
    }
}

/* ------------------------------------------------------------------- memory */

/* Between gemm_keep_buffers() and gemm_free_buffers() (a fused epoch, train.c) each
 * buffer of this thread's products is kept and reused, grown when a product needs
 * more, instead of allocated and freed by every product. */
static _Thread_local struct {
    float *p;
    size_t floats;
} kept[N_GEMM_BUFFERS];
static _Thread_local int keeping;

void gemm_keep_buffers(void) { keeping = 1; }

void gemm_free_buffers(void)
{
    for (int use = 0; use < N_GEMM_BUFFERS; use++) {
        free(kept[use].p);
        kept[use].p = NULL;
        kept[use].floats = 0;
    }
    keeping = 0;
}

float *gemm_buffer(int use, size_t floats)
{
    float *p = NULL;
    if (keeping && floats <= kept[use].floats)
        return kept[use].p;
    if (posix_memalign((void **)&p, 64, (floats ? floats : 1) * sizeof(float)) != 0)
        return NULL;
    if (keeping) {
        free(kept[use].p);
        kept[use].p = p;
        kept[use].floats = floats;
    }
    return p;
}

void gemm_release_buffer(int use, float *p)
{
    if (p != kept[use].p)
        free(p);
}
