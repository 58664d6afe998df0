/* train.c -- one fused epoch of SGD over a layer program.
 *
 * Dimension letters: N samples, L layers, P floats of the parameter block, bs the batch
 * size (B <= bs the rows of one step; the last step may be short), I and O the in- and
 * out-features of a layer, T the columns of the float targets.
 *
 * The program is a table of fs_layer rows (kernels.h, fastsgd/backends/program.py).
 * Each step runs the same kernels, in the same order, as the layer-by-layer path (and
 * as the reference epoch): gather, forward through the rows, loss, backward through
 * them in reverse, then one SGD update of the whole parameter block (taken layer by
 * layer inside the backward pass when the layers' parameters tile the block: see
 * backward).  (The batch of a
 * program that starts with a LINEAR is gathered by that layer's products as they pack
 * it, which gives the same values; see scratch.)  The activations
 * a[0..L] and their gradients d[0..L] live in one scratch allocation made once per call,
 * as does the matmuls' packing buffer (gemm_keep_buffers).  The caller
 * (fastsgd/backends/c_ext.py) has checked the table, every size and every index.
 */
#define _POSIX_C_SOURCE 200112L /* posix_memalign */

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "kernels.h"

/* Gathers below this many floats run on one thread: waking the team costs more. */
#define PARALLEL_MIN_FLOATS (1 << 15)

/* ------------------------------------------------------------- the batch */

/* A gather split over the pool's threads by rows. */
typedef struct {
    void *dst;
    const void *src;
    const int64_t *rows;
    int64_t B;
    size_t size;
} gather_job;

static void gather_part(void *job, int t, int T)
{
    const gather_job *g = job;
    for (int64_t r = t * g->B / T; r < (t + 1) * g->B / T; r++)
        memcpy((char *)g->dst + r * g->size, (const char *)g->src + g->rows[r] * g->size,
               g->size);
}

/* dst[r] = src[rows[r]] for r < B, rows of `size` bytes.   src (N, size), dst (B, size). */
static void gather_rows(void *restrict dst, const void *restrict src,
                        const int64_t *restrict rows, int64_t B, size_t size)
{
    const int threads = (int64_t)(B * size) >= PARALLEL_MIN_FLOATS * (int64_t)sizeof(float)
                            ? pool_threads() : 1;
    gather_job job = {dst, src, rows, B, size};
    fs_parallel(gather_part, &job, threads);
}

/* --------------------------------------------------------------- scratch */

/* The per-call working memory: a[l] (bs, width l) the input of layer l (a[L] the
 * output), d[l] the loss gradient w.r.t. a[l] (only past the first LINEAR: NULL
 * elsewhere), and the batch's targets (bs, T) or labels (bs,).  One allocation;
 * every array starts on a 64-byte line.  When the program starts with a LINEAR, a[0]
 * is NULL, not allocated: that layer's two products read the batch x[rows] through the
 * index while they pack it (gemm.c), so the step makes no gathered copy of its inputs. */
typedef struct {
    float **a, **d;
    float *targets;
    int64_t *labels;
    void *memory;
    int64_t first_linear;
    const float *x;       /* the samples (N, I) */
    const int64_t *rows;  /* this step's batch rows of x, or NULL: a[0] holds them */
} scratch;

static size_t lines_of(int64_t floats) { return (size_t)((floats + 15) / 16 * 16); }

static void scratch_free(scratch *s)
{
    free(s->memory);
    free(s->a);
}

/* Lays out and allocates the scratch for batches of up to `rows` rows; 0 or -1. */
static int scratch_alloc(scratch *s, const fs_layer *layers, int64_t L, int64_t rows,
                         int64_t T)
{
    memset(s, 0, sizeof *s);
    s->first_linear = 0;
    while (layers[s->first_linear].kind != FS_LINEAR)
        s->first_linear++;
    s->a = calloc((size_t)(2 * (L + 1)), sizeof(float *));
    if (!s->a)
        return -1;
    s->d = s->a + (L + 1);

    /* a[0] only for a program that does not start with a LINEAR (see above). */
    const int64_t first_kept = layers[0].kind == FS_LINEAR ? 1 : 0;
    size_t floats = lines_of(rows * T) + lines_of(2 * rows); /* targets, int64 labels */
    for (int64_t l = first_kept; l <= L; l++) {
        const int64_t width = l == 0 ? layers[0].n_in : layers[l - 1].n_out;
        floats += lines_of(rows * width) * (l > s->first_linear ? 2 : 1);
    }
    float *p = NULL;
    if (posix_memalign((void **)&p, 64, floats * sizeof(float)) != 0) {
        free(s->a);
        return -1;
    }
    s->memory = p;
    s->targets = p;
    p += lines_of(rows * T);
    s->labels = (int64_t *)p;
    p += lines_of(2 * rows);
    for (int64_t l = first_kept; l <= L; l++) {
        const int64_t width = l == 0 ? layers[0].n_in : layers[l - 1].n_out;
        s->a[l] = p;
        p += lines_of(rows * width);
        if (l > s->first_linear) {
            s->d[l] = p;
            p += lines_of(rows * width);
        }
    }
    return 0;
}

/* ---------------------------------------------------------------- a step */

/* a[l + 1] = layer l of a[l], for each layer in order; params (P,). */
static void forward(const scratch *s, const fs_layer *layers, int64_t L, const float *params,
                    int64_t B)
{
    for (int64_t l = 0; l < L; l++) {
        const fs_layer *layer = &layers[l];
        const float *in = s->a[l];
        float *out = s->a[l + 1];
        const int64_t n = B * layer->n_out;
        switch (layer->kind) {
        case FS_LINEAR: {
            const float *w = params + layer->param, *b = w + layer->n_in * layer->n_out;
            if (l == 0 && s->rows)
                linear_forward_rows(out, s->x, s->rows, w, b, B, layer->n_in, layer->n_out);
            else
                linear_forward(out, in, w, b, B, layer->n_in, layer->n_out, 0);
            break;
        }
        default: activation_forward(layer->kind, out, in, n);
        }
    }
}

/* The mean loss of the output z = a[L] (B, O) and d[L] = dL/dz. */
static double loss_and_gradient(const scratch *s, int loss_kind, int64_t L, int64_t B,
                                int64_t O)
{
    return loss_value_and_gradient(loss_kind, s->d[L], s->a[L], s->targets, s->labels, B, O);
}

/* From d[L], the gradients of every LINEAR into grads (P,) and d[l] for l past the
 * first LINEAR, in reverse layer order.  With sgd (over the whole block; else NULL)
 * each LINEAR also takes its SGD step, once its input gradient, which needs the
 * weights before the step, is computed: the weights tile by tile as their gradient is
 * computed, while it is in cache, then the bias.  Every gradient is still that of the
 * parameters before the step, so when the LINEARs' parameters tile the block this is
 * the layer path's step of the whole block after the backward pass. */
static void backward(const scratch *s, const fs_layer *layers, int64_t L, const float *params,
                     float *grads, int64_t B, const sgd_step *sgd)
{
    for (int64_t l = L - 1; l >= s->first_linear; l--) {
        const fs_layer *layer = &layers[l];
        const float *d_out = s->d[l + 1];
        float *d_in = s->d[l]; /* NULL at the first LINEAR */
        const int64_t n = B * layer->n_out;
        switch (layer->kind) {
        case FS_LINEAR: {
            const int64_t I = layer->n_in, O = layer->n_out;
            float *gw = grads + layer->param, *gb = gw + I * O;
            if (l > s->first_linear)
                matmul_backward_input(d_in, d_out, params + layer->param, B, I, O, 0);
            bias_backward(gb, d_out, B, O, 0);
            sgd_step step = {0};
            if (sgd) {
                float *v = sgd->velocity ? sgd->velocity + layer->param : NULL;
                step = (sgd_step){sgd->param + layer->param, v, sgd->lr, sgd->momentum,
                                  sgd->weight_decay};
            }
            const int through_rows = l == 0 && s->rows;
            weight_gradient_step(gw, through_rows ? s->x : s->a[l],
                                 through_rows ? s->rows : NULL, d_out, B, I, O,
                                 sgd ? &step : NULL);
            if (sgd)
                sgd_update(step.param + I * O, step.velocity ? step.velocity + I * O : NULL,
                           gb, O, sgd->lr, sgd->momentum, sgd->weight_decay);
            break;
        }
        default: activation_backward(layer->kind, d_in, s->a[l], s->a[l + 1], d_out, n);
        }
    }
}

/* Whether the LINEARs' parameters, in layer order, tile the block [0, P) exactly, as
 * fastsgd's programs lay them out: then each layer can take its own SGD step in the
 * backward pass (see backward), and nothing in the block is left out or stepped twice. */
static int linears_tile(const fs_layer *layers, int64_t L, int64_t P)
{
    int64_t end = 0;
    for (int64_t l = 0; l < L; l++) {
        if (layers[l].kind != FS_LINEAR)
            continue;
        if (layers[l].param != end)
            return 0;
        end += layers[l].n_in * layers[l].n_out + layers[l].n_out;
    }
    return end == P;
}

/* ---------------------------------------------------------------- the epoch */

int64_t train_epoch(double *restrict losses, float *params, float *grads, float *velocities,
                    const fs_layer *restrict layers, int64_t L, int loss_kind,
                    const float *restrict x, const float *restrict targets,
                    int64_t n_targets_cols, const int64_t *restrict labels,
                    const int64_t *restrict order, const float *restrict lrs, int64_t N,
                    int64_t bs, int64_t P, float momentum, float weight_decay)
{
    if (N <= 0 || bs <= 0 || L <= 0)
        return 0;
    const int64_t steps = (N + bs - 1) / bs, rows = bs < N ? bs : N;
    const int64_t I = layers[0].n_in, O = layers[L - 1].n_out;
    const int64_t T = loss_kind == FS_CROSS_ENTROPY ? 0 : n_targets_cols;
    scratch s;
    if (scratch_alloc(&s, layers, L, rows, T) != 0)
        return -1;
    s.x = x;

    const int stepwise = linears_tile(layers, L, P);
    gemm_keep_buffers(); /* the matmuls' packing memory too is allocated once */
    int64_t step;
    for (step = 0; step < steps; step++) {
        const int64_t start = step * bs, B = N - start < bs ? N - start : bs;
        const int64_t *batch = order + start;
        if (!s.a[0])
            s.rows = batch; /* read in place by the first layer's products */
        else
            gather_rows(s.a[0], x, batch, B, (size_t)I * sizeof(float));
        if (loss_kind == FS_CROSS_ENTROPY)
            gather_rows(s.labels, labels, batch, B, sizeof(int64_t));
        else
            gather_rows(s.targets, targets, batch, B, (size_t)T * sizeof(float));

        forward(&s, layers, L, params, B);
        const double loss = loss_and_gradient(&s, loss_kind, L, B, O);
        losses[step] = loss;
        if (!isfinite(loss))
            break;
        const sgd_step sgd = {params, velocities, lrs[step], momentum, weight_decay};
        backward(&s, layers, L, params, grads, B, stepwise ? &sgd : NULL);
        if (!stepwise)
            sgd_update(params, velocities, grads, P, sgd.lr, momentum, weight_decay);
    }
    gemm_free_buffers();
    scratch_free(&s);
    return step;
}
