/* train.c -- one fused epoch of SGD over a Linear model or a Linear-ReLU-Linear MLP.
 *
 * Dimension letters: N samples, I in-features, H hidden units, O outputs, bs the batch
 * size (B <= bs the rows of one step; the last step may be short).
 *
 * Each step runs the same kernels, in the same order, as the layer-by-layer path (and
 * as the Numba fused epoch): gather, forward, loss, backward, then the SGD update of
 * each parameter.  The big products go through the matmul drivers of gemm.c, so they
 * use the packed micro-kernels and OpenMP.  The scratch arrays, and the matmuls'
 * packing buffer (gemm_keep_buffers), are allocated once per call, not per step.  The caller (fastsgd/backends/c_ext.py) has checked every size and index.
 */
#define _POSIX_C_SOURCE 200112L /* posix_memalign */

#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "internal.h"
#include "kernels.h"

/* Gathers and updates below this many floats run on one thread: waking the team
 * costs more. */
#define PARALLEL_MIN_FLOATS (1 << 15)

/* xb[r] = x[order[start + r]] for r < B.   x (N, I), xb (B, I). */
static void gather_rows(float *restrict xb, const float *restrict x,
                        const int64_t *restrict order, int64_t B, int64_t I)
{
    const int threads = B * I >= PARALLEL_MIN_FLOATS ? matmul_threads() : 1;
    (void)threads;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t r = 0; r < B; r++)
        memcpy(xb + r * I, x + order[r] * I, (size_t)I * sizeof(float));
}

/* sgd_update on a large parameter, its elements split among the threads in ranges of
 * whole 64-byte lines; element by element the same update, so the same result. */
static void sgd_update_parallel(float *param, float *velocity, const float *grad, int64_t n,
                                float lr, float momentum, float weight_decay)
{
#ifdef _OPENMP
    const int threads = n >= PARALLEL_MIN_FLOATS ? matmul_threads() : 1;
    if (threads > 1) {
#pragma omp parallel num_threads(threads)
        {
            const int64_t t = omp_get_thread_num(), T = omp_get_num_threads();
            const int64_t lines = (n + 15) / 16;
            const int64_t lo = 16 * (t * lines / T);
            int64_t hi = 16 * ((t + 1) * lines / T);
            hi = hi < n ? hi : n;
            if (lo < hi)
                sgd_update(param + lo, velocity + lo, grad + lo, hi - lo, lr, momentum,
                           weight_decay);
        }
        return;
    }
#endif
    sgd_update(param, velocity, grad, n, lr, momentum, weight_decay);
}

static size_t round_up16(int64_t n) { return (size_t)((n + 15) / 16 * 16); }

int64_t train_epoch(double *restrict losses,
                    float *restrict w1, float *restrict b1, float *restrict w2,
                    float *restrict b2, float *restrict v_w1, float *restrict v_b1,
                    float *restrict v_w2, float *restrict v_b2, float *restrict g_w1,
                    float *restrict g_b1, float *restrict g_w2, float *restrict g_b2,
                    const float *restrict x, const int64_t *restrict targets,
                    const int64_t *restrict order, const float *restrict lrs,
                    int64_t N, int64_t I, int64_t H, int64_t O, int64_t bs,
                    int two_layers, int binary, float momentum, float weight_decay)
{
    if (N <= 0 || bs <= 0)
        return 0;
    if (!two_layers)
        H = O; /* the one layer: w1 (I, O); no hidden arrays */
    const int64_t steps = (N + bs - 1) / bs, rows = bs < N ? bs : N;

    /* One allocation for every scratch array, each 64-byte aligned. */
    const size_t n_xb = round_up16(rows * I), n_z = round_up16(rows * O);
    const size_t n_h = two_layers ? round_up16(rows * H) : 0;
    const size_t n_t = round_up16(rows * 2); /* int64 labels or float targets */
    float *buffer = NULL;
    if (posix_memalign((void **)&buffer, 64,
                       (n_xb + 2 * n_z + 3 * n_h + n_t) * sizeof(float)) != 0)
        return -1;
    float *xb = buffer, *z = xb + n_xb, *dz = z + n_z;
    float *h = dz + n_z, *a = h + n_h, *da = a + n_h;
    void *tb = da + n_h;
    float *tb_f = tb;
    int64_t *tb_i = tb;

    gemm_keep_buffers(); /* the matmuls' packing memory too is allocated once */
    int64_t s;
    for (s = 0; s < steps; s++) {
        const int64_t start = s * bs, B = N - start < bs ? N - start : bs;
        const int64_t *batch = order + start;
        gather_rows(xb, x, batch, B, I);
        if (binary) {
            for (int64_t r = 0; r < B; r++)
                tb_f[r] = (float)targets[batch[r]];
        } else {
            for (int64_t r = 0; r < B; r++)
                tb_i[r] = targets[batch[r]];
        }

        if (two_layers) {
            linear_forward(h, xb, w1, b1, B, I, H);
            relu_forward(a, h, B * H);
            linear_forward(z, a, w2, b2, B, H, O);
        } else {
            linear_forward(z, xb, w1, b1, B, I, O);
        }

        double loss;
        if (binary) { /* O == 1: z and dz are (B,) */
            loss = mnist_loss_forward(z, tb_f, B);
            mnist_loss_backward(dz, z, tb_f, B);
        } else {
            cross_entropy_forward(&loss, z, tb_i, B, O);
            cross_entropy_backward(dz, z, tb_i, B, O);
        }
        losses[s] = loss;
        if (!isfinite(loss))
            break;

        const float lr = lrs[s];
        if (two_layers) {
            matmul_backward_weight(g_w2, a, dz, B, H, O);
            bias_backward(g_b2, dz, B, O);
            matmul_backward_input(da, dz, w2, B, H, O);
            relu_backward(da, h, da, B * H);
            matmul_backward_weight(g_w1, xb, da, B, I, H);
            bias_backward(g_b1, da, B, H);
            sgd_update_parallel(w1, v_w1, g_w1, I * H, lr, momentum, weight_decay);
            sgd_update(b1, v_b1, g_b1, H, lr, momentum, weight_decay);
            sgd_update_parallel(w2, v_w2, g_w2, H * O, lr, momentum, weight_decay);
            sgd_update(b2, v_b2, g_b2, O, lr, momentum, weight_decay);
        } else {
            matmul_backward_weight(g_w1, xb, dz, B, I, O);
            bias_backward(g_b1, dz, B, O);
            sgd_update_parallel(w1, v_w1, g_w1, I * O, lr, momentum, weight_decay);
            sgd_update(b1, v_b1, g_b1, O, lr, momentum, weight_decay);
        }
    }
    gemm_free_buffers();
    free(buffer);
    return s;
}
