/* products.c -- the matmul family's kernels (kernels.h) and the fused epoch's two
 * products (internal.h), each one call of gemm() (gemm.c) on views of its arrays.
 *
 * Dimension letters: B, I, O (batch, in-features, out-features), M, K, N for the plain
 * matmul.  The backward kernels pass x.T and w.T as the plain row-major arrays x and w
 * read the other way round: no transposed copy is made.
 */
#include <stdatomic.h>

#include "internal.h"
#include "kernels.h"

/* Each product returns 1, or 0 when scan is set and an element of its output is NaN
 * or +-Inf (kernels.h). */
static int finite_unless(int scan, atomic_int *bad)
{
    return !scan || !atomic_load(bad);
}

int matmul(float *restrict out, const float *restrict a, const float *restrict b, int64_t M,
           int64_t K, int64_t N, int scan)
{
    atomic_int bad = 0;
    gemm(out, (view){a, K, 1}, (view){b, N, 1}, NULL, M, K, N, NULL, NULL, NULL,
         scan ? &bad : NULL);
    return finite_unless(scan, &bad);
}

int matmul_backward_input(float *restrict dx, const float *restrict dy,
                          const float *restrict w, int64_t B, int64_t I, int64_t O, int scan)
{
    /* dx (B, I) = dy (B, O) @ w.T (O, I), where w.T[o][i] = w[i * O + o]. */
    atomic_int bad = 0;
    gemm(dx, (view){dy, O, 1}, (view){w, 1, O}, NULL, B, O, I, NULL, NULL, NULL,
         scan ? &bad : NULL);
    return finite_unless(scan, &bad);
}

/* dw (I, O) = x[rows].T (I, B) @ dy (B, O), or x.T @ dy without rows, where
 * x.T[i][b] = x[b * I + i]; then the step, if any (see weight_gradient_step). */
static void weight_gradient(float *restrict dw, const float *restrict x,
                            const int64_t *restrict rows, const float *restrict dy, int64_t B,
                            int64_t I, int64_t O, const sgd_step *step,
                            const side_work *side, atomic_int *bad)
{
    const view xt = rows ? (view){x, 1, I, rows, 1} : (view){x, 1, I, .transposed = 1};
    gemm(dw, xt, (view){dy, O, 1}, NULL, I, B, O, step, side, NULL, bad);
}

int matmul_backward_weight(float *restrict dw, const float *restrict x,
                           const float *restrict dy, int64_t B, int64_t I, int64_t O, int scan)
{
    atomic_int bad = 0;
    weight_gradient(dw, x, NULL, dy, B, I, O, NULL, NULL, scan ? &bad : NULL);
    return finite_unless(scan, &bad);
}

FS_CLONES int bias_backward(float *restrict db, const float *restrict dy, int64_t B, int64_t O,
                            int scan)
{
    for (int64_t o = 0; o < O; o++)
        db[o] = 0.0f;
    for (int64_t b = 0; b < B; b++) {
        const float *row = dy + b * O;
        for (int64_t o = 0; o < O; o++)
            db[o] += row[o];
    }
    return !scan || all_finite_f32(db, O);
}

int linear_forward(float *restrict out, const float *restrict x, const float *restrict w,
                   const float *restrict b, int64_t B, int64_t I, int64_t O, int scan)
{
    atomic_int bad = 0;
    gemm(out, (view){x, I, 1}, (view){w, O, 1}, b, B, I, O, NULL, NULL, NULL,
         scan ? &bad : NULL);
    return finite_unless(scan, &bad);
}

void linear_forward_rows(float *restrict out, const float *restrict x,
                         const int64_t *restrict rows, const float *restrict w,
                         const float *restrict b, int64_t B, int64_t I, int64_t O,
                         depth_split *split)
{
    gemm(out, (view){x, I, 1, rows}, (view){w, O, 1}, b, B, I, O, NULL, NULL, split, NULL);
}

void weight_gradient_step(float *restrict dw, const float *restrict x,
                          const int64_t *restrict rows, const float *restrict dy, int64_t B,
                          int64_t I, int64_t O, const sgd_step *step, const side_work *side)
{
    weight_gradient(dw, x, rows, dy, B, I, O, step, side, NULL);
}

int linear_backward(float *restrict dx, float *restrict dw, float *restrict db,
                    const float *restrict x, const float *restrict w, const float *restrict dy,
                    int64_t B, int64_t I, int64_t O, int scan)
{
    int finite = 1;
    if (dx)
        finite = matmul_backward_input(dx, dy, w, B, I, O, scan);
    finite &= matmul_backward_weight(dw, x, dy, B, I, O, scan);
    return finite & bias_backward(db, dy, B, O, scan);
}
