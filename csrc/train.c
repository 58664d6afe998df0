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
 * backward).  After a first LINEAR, the layers after it and the loss run in pieces of
 * rows of the batch on the threads (see the tail).  (The batch of a
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
    float *split_partials; /* a first LINEAR's partial products (its forward split by depth:
                              gemm), as split describes them */
    depth_split *split;
    int in_pieces; /* the tail runs in pieces (see the tail), which add the first LINEAR's
                      partial products of their rows and sum its bias gradient */
    const side_work *tail_sums; /* with in_pieces: what the tail's pieces leave to add up
                                   and step, done beside the first LINEAR's weight
                                   gradient (tail_sums) */
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
    const int64_t partials = first_kept ? (gemm_depth_blocks(layers[0].n_in) - 1) * rows
                                              * layers[0].n_out : 0;
    size_t floats = lines_of(rows * T) + lines_of(2 * rows); /* targets, int64 labels */
    floats += lines_of(partials);
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
    s->split_partials = p;
    p += lines_of(partials);
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

/* Rows [r0, r0 + n) of the batch (all of it: r0 0 and n B, or a piece of the tail) are
 * what the functions of a step below compute; a[l] + r0 * width is the first of them. */

/* The weights of the narrow LINEARs (at most NARROW_MAX_O outputs) among the layers
 * after the first, laid out for narrow.c's products, for one piece of the tail: layer
 * l's at base + at[l], at[l] -1 for the other layers. */
typedef struct {
    float *base;
    const int64_t *at;
} narrow_set;

static const float *narrow_weights(const narrow_set *narrow, int64_t l)
{
    return narrow && narrow->at[l] >= 0 ? narrow->base + narrow->at[l] : NULL;
}

/* a[l + 1] = layer l of a[l], for the layers l0 <= l < l1 in order; params (P,); narrow
 * (or NULL) the piece's narrow weights. */
static void forward(const scratch *s, const fs_layer *layers, int64_t l0, int64_t l1,
                    const float *params, int64_t r0, int64_t n, const narrow_set *narrow)
{
    for (int64_t l = l0; l < l1; l++) {
        const fs_layer *layer = &layers[l];
        const int64_t I = layer->n_in, O = layer->n_out;
        float *out = s->a[l + 1] + r0 * O;
        switch (layer->kind) {
        case FS_LINEAR: {
            const float *w = params + layer->param, *b = w + I * O;
            const float *prepared = narrow_weights(narrow, l);
            if (l == 0 && s->rows) {
                linear_forward_rows(out, s->x, s->rows + r0, w, b, n, I, O, s->split);
                if (!s->in_pieces)
                    add_depth_partials(out, s->split, 0, n);
            } else if (prepared)
                narrow_forward(out, s->a[l] + r0 * I, prepared, b, n, I, O);
            else
                linear_forward(out, s->a[l] + r0 * I, w, b, n, I, O, 0);
            break;
        }
        default: activation_forward(layer->kind, out, s->a[l] + r0 * I, n * O);
        }
    }
}

/* The rows' part of the batch's (B rows) mean loss of the output z = a[L] (B, O), and
 * their d[L] = dL/dz; targets have T columns. */
static double loss_and_gradient(const scratch *s, int loss_kind, int64_t L, int64_t O,
                                int64_t T, int64_t r0, int64_t n, int64_t B)
{
    return loss_rows(loss_kind, s->d[L] + r0 * O, s->a[L] + r0 * O, s->targets + r0 * T,
                     s->labels + r0, n, O, B);
}

/* From d[l1], the gradients of the LINEARs among the layers l0 <= l < l1 into grads
 * (P,) and d[l] for l past the first LINEAR, in reverse layer order.  With sgd (over
 * the whole block; else NULL) each LINEAR also takes its SGD step, once its input
 * gradient, which needs the weights before the step, is computed: the weights block by
 * block of rows as their gradient is computed, while it is in cache, then the bias.
 * Every gradient is still that of the parameters before the step, so when the LINEARs'
 * parameters tile the block this is the layer path's step of the whole block after the
 * backward pass.  narrow (or NULL) the piece's narrow weights (see forward). */
static void backward(const scratch *s, const fs_layer *layers, int64_t l0, int64_t l1,
                     const float *params, float *grads, int64_t r0, int64_t n,
                     const sgd_step *sgd, const narrow_set *narrow)
{
    for (int64_t l = l1 - 1; l >= l0; l--) {
        const fs_layer *layer = &layers[l];
        const int64_t I = layer->n_in, O = layer->n_out;
        const float *d_out = s->d[l + 1] + r0 * O;
        float *d_in = l > s->first_linear ? s->d[l] + r0 * I : NULL; /* none at the first */
        switch (layer->kind) {
        case FS_LINEAR: {
            float *gw = grads + layer->param, *gb = gw + I * O;
            const float *prepared = narrow_weights(narrow, l);
            /* a ReLU before a narrow layer: its backward done by the layer's (a[l - 1]
             * its input, the gate), straight into d[l - 1] */
            const int relu_before = prepared && d_in && l - 1 >= l0
                                    && layers[l - 1].kind == FS_RELU && l - 1 > s->first_linear;
            if (relu_before)
                narrow_backward_input(s->d[l - 1] + r0 * I, d_out, prepared,
                                      s->a[l - 1] + r0 * I, n, I, O);
            else if (d_in && prepared)
                narrow_backward_input(d_in, d_out, prepared, NULL, n, I, O);
            else if (d_in)
                matmul_backward_input(d_in, d_out, params + layer->param, n, I, O, 0);
            /* the first LINEAR of a tail in pieces: its bias gradient and step are
             * tail_sums', run beside its weight gradient */
            const int tail_summed = l == s->first_linear && s->in_pieces;
            if (!tail_summed)
                bias_backward(gb, d_out, n, O, 0);
            sgd_step step = {0};
            if (sgd) {
                float *v = sgd->velocity ? sgd->velocity + layer->param : NULL;
                step = (sgd_step){sgd->param + layer->param, v, sgd->lr, sgd->momentum,
                                  sgd->weight_decay};
            }
            const int through_rows = l == 0 && s->rows;
            if (prepared && !sgd)
                narrow_weight_gradient(gw, s->a[l] + r0 * I, d_out, n, I, O);
            else
                weight_gradient_step(gw, through_rows ? s->x : s->a[l] + r0 * I,
                                     through_rows ? s->rows + r0 : NULL, d_out, n, I, O,
                                     sgd ? &step : NULL, tail_summed ? s->tail_sums : NULL);
            if (sgd && !tail_summed)
                sgd_update(step.param + I * O, step.velocity ? step.velocity + I * O : NULL,
                           gb, O, sgd->lr, sgd->momentum, sgd->weight_decay);
            if (relu_before)
                l--; /* the ReLU's backward is done */
            break;
        }
        default:
            activation_backward(layer->kind, d_in, s->a[l] + r0 * I, s->a[l + 1] + r0 * O,
                                d_out, n * O);
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

/* ------------------------------------------------------------- the tail */

/* A program that starts with a LINEAR (whose LINEARs tile the block) runs the layers
 * between that LINEAR's forward and its backward, and the loss, in pieces of rows of
 * the batch spread over the threads (tail_rows): the rest of the forward, the loss and the
 * backward down to d[1] are each row's own work, and each piece keeps the gradients of
 * the tail's LINEARs over its rows apart, and the sum of its rows of d[1], the first
 * LINEAR's bias gradient.  A LINEAR of the tail with at most NARROW_MAX_O outputs runs
 * narrow.c's products, each thread from its own copy of the weights laid out for them
 * (784-128-10, harness epoch: bs 64 81.3 -> 80.6 ms, bs 256 77.9 -> 77.7), and its
 * input gradient is gated by a ReLU before it, whose own backward pass it takes (bs 64
 * 74.4 -> 73.7 ms, bs 256 71.3 -> 70.5).  After the pieces, one thread adds them up
 * piece by piece, in order, and takes those layers' SGD steps, beside the first
 * LINEAR's weight gradient (tail_sums).  The pieces do not depend on the thread count,
 * so neither do the results.  (On one thread, at batch 64 of 784-128-10, this tail took
 * ~14 us a step, 15% of it.) */
enum { TAIL_MAX_PIECES = 8 }; /* each piece holds a copy of the tail's gradients */

static int64_t tail_rows(int64_t B)
{
    /* Half the batch on whole tiles of 8 rows, from 32 to 128 rows (784-128-10, 2
     * threads, harness epoch ms: bs 64 in pieces of 32 rows 83.3, of 16 85.8, of 64
     * 87.5; bs 256 in pieces of 128 79.2, of 64 79.6, of 32 81.0; one piece 86.0 / 84.0),
     * and more for a batch beyond 1024 rows, so that there are at most TAIL_MAX_PIECES.
     * A function of the batch alone, never of the threads. */
    const int64_t half = (B + 1) / 2, rows = (half + 7) / 8 * 8;
    const int64_t fewest = (B + TAIL_MAX_PIECES - 1) / TAIL_MAX_PIECES;
    const int64_t chosen = rows < 32 ? 32 : rows > 128 ? 128 : rows;
    return chosen > fewest ? chosen : fewest;
}

/* The most pieces a batch of at most `rows` rows is cut into (tail_rows): 2 up to 256
 * rows, then one per 128 rows, up to TAIL_MAX_PIECES. */
static int64_t tail_pieces_at_most(int64_t rows)
{
    const int64_t n = (rows + 127) / 128;
    return n < 2 ? 2 : n > TAIL_MAX_PIECES ? TAIL_MAX_PIECES : n;
}

typedef struct {
    const scratch *s;
    const fs_layer *layers;
    int64_t L, B, O, T; /* T: the columns of the float targets */
    int loss_kind;
    const float *params;
    float *partials;    /* (pieces, tail_floats): each piece's gradients, as grads from tail0,
                           then its rows' sum of d[1] (the first LINEAR's bias gradient) */
    double *piece_loss; /* (pieces,): each piece's part of the mean loss */
    int64_t pieces, piece_rows, tail0, tail_floats, H; /* H: the first LINEAR's outputs */
    float *narrow;      /* (pieces, narrow_floats): the narrow weights (narrow_set), laid
                           out by each thread in the place of its first piece; zeroed
                           once, for the layout's padding */
    int64_t *narrow_at; /* (L,): narrow_set's at */
    int64_t narrow_floats;
} tail_job;

/* Rows [r0, r0 + n) of the batch through the tail: forward, loss, backward, the
 * gradients into this piece's own partials, and the sum of the rows of d[1], while they
 * are in this thread's cache. */
static void tail_piece(const tail_job *j, int64_t piece, int64_t r0, int64_t n,
                       const narrow_set *narrow)
{
    add_depth_partials(j->s->a[1], j->s->split, r0, n); /* the first LINEAR's rows */
    forward(j->s, j->layers, 1, j->L, j->params, r0, n, narrow);
    j->piece_loss[piece] =
        loss_and_gradient(j->s, j->loss_kind, j->L, j->O, j->T, r0, n, j->B);
    float *g = j->partials + piece * j->tail_floats - j->tail0; /* g + param: this piece's */
    backward(j->s, j->layers, 1, j->L, j->params, g, r0, n, NULL, narrow);
    bias_backward(j->partials + piece * j->tail_floats + (j->tail_floats - j->H),
                  j->s->d[1] + r0 * j->H, n, j->H, 0);
}

static void tail_part(void *job, int t, int T)
{
    const tail_job *j = job;
    const int64_t first = t * j->pieces / T, end = (t + 1) * j->pieces / T;
    if (first >= end)
        return;
    /* this step's narrow weights, laid out once by each thread that has pieces */
    const narrow_set narrow = {j->narrow + first * j->narrow_floats, j->narrow_at};
    for (int64_t l = 1; l < j->L; l++)
        if (j->narrow_at[l] >= 0)
            narrow_prepare(narrow.base + j->narrow_at[l], j->params + j->layers[l].param,
                           j->layers[l].n_in, j->layers[l].n_out);
    for (int64_t piece = first; piece < end; piece++) {
        const int64_t r0 = piece * j->piece_rows;
        tail_piece(j, piece, r0, j->B - r0 < j->piece_rows ? j->B - r0 : j->piece_rows,
                   &narrow);
    }
}

/* The sum of the pieces' n floats from `offset` of their partials into dst, piece by
 * piece in order. */
static void add_pieces(float *dst, const tail_job *j, int64_t offset, int64_t n)
{
    const float *part = j->partials + offset;
    memcpy(dst, part, (size_t)n * sizeof(float));
    for (int64_t piece = 1; piece < j->pieces; piece++)
        for (int64_t i = 0; i < n; i++)
            dst[i] += part[piece * j->tail_floats + i];
}

/* The tail of a step in pieces (above); returns the mean loss. */
static double tail_in_pieces(tail_job *j)
{
    j->piece_rows = tail_rows(j->B);
    j->pieces = (j->B + j->piece_rows - 1) / j->piece_rows;
    fs_parallel(tail_part, j, pool_threads());
    double loss = 0.0;
    for (int64_t piece = 0; piece < j->pieces; piece++)
        loss += j->piece_loss[piece];
    return loss;
}

/* After a tail whose loss is finite, what its pieces leave to add up and step: the
 * first LINEAR's bias gradient into grads (first_bias, its place there) and its SGD
 * step, and the gradients of the tail's LINEARs into grads and their SGD steps (sgd).
 * None of it touches the first LINEAR's weights or their gradient, so it runs beside
 * that weight gradient, on the first of its threads to finish a share, while the other
 * still works (side_work; 784-128-10, harness epoch, medians of 6 interleaved runs: bs
 * 64 80.9 -> 80.2 ms). */
typedef struct {
    const tail_job *j;
    float *grads, *first_bias;
    const sgd_step *sgd;
} tail_sums_job;

static void tail_sums(void *ctx)
{
    const tail_sums_job *sums = ctx;
    const tail_job *j = sums->j;
    const sgd_step *sgd = sums->sgd;
    add_pieces(sums->first_bias, j, j->tail_floats - j->H, j->H);
    const int64_t bias_at = sums->first_bias - sums->grads; /* the bias's place in the block */
    sgd_update(sgd->param + bias_at, sgd->velocity ? sgd->velocity + bias_at : NULL,
               sums->first_bias, j->H, sgd->lr, sgd->momentum, sgd->weight_decay);
    for (int64_t l = 1; l < j->L; l++) {
        const fs_layer *layer = &j->layers[l];
        if (layer->kind != FS_LINEAR)
            continue;
        const int64_t size = layer->n_in * layer->n_out + layer->n_out;
        float *g = sums->grads + layer->param;
        add_pieces(g, j, layer->param - j->tail0, size);
        sgd_update(sgd->param + layer->param,
                   sgd->velocity ? sgd->velocity + layer->param : NULL, g, size, sgd->lr,
                   sgd->momentum, sgd->weight_decay);
    }
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
    /* The tail in pieces: after a first LINEAR, when the LINEARs tile the block. */
    tail_job tail = {&s, layers, L, 0, O, T, loss_kind, params, NULL, NULL, 0, 0, 0, 0, 0};
    if (layers[0].kind == FS_LINEAR && stepwise && L > 1) {
        tail.H = layers[0].n_out;
        tail.tail0 = layers[0].n_in * tail.H + tail.H;
        tail.tail_floats = P - tail.tail0 + tail.H;
        const int64_t pieces = tail_pieces_at_most(rows);
        tail.narrow_at = malloc((size_t)L * sizeof(int64_t));
        for (int64_t l = 0; tail.narrow_at && l < L; l++) {
            const fs_layer *layer = &layers[l];
            const int narrow = l > 0 && layer->kind == FS_LINEAR && layer->n_out <= NARROW_MAX_O;
            tail.narrow_at[l] = narrow ? tail.narrow_floats : -1;
            if (narrow)
                tail.narrow_floats += narrow_floats(layer->n_in, layer->n_out);
        }
        tail.partials = malloc((size_t)(pieces * tail.tail_floats + 1) * sizeof(float));
        tail.piece_loss = malloc((size_t)pieces * sizeof(double));
        tail.narrow = calloc((size_t)(pieces * tail.narrow_floats + 1), sizeof(float));
        if (!tail.partials || !tail.piece_loss || !tail.narrow_at || !tail.narrow) {
            free(tail.partials);
            free(tail.piece_loss);
            free(tail.narrow_at);
            free(tail.narrow);
            scratch_free(&s);
            return -1;
        }
    }
    depth_split split = {s.split_partials, 0, 0, 0, 0};
    s.split = &split;
    s.in_pieces = tail.partials != NULL;
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

        const sgd_step sgd = {params, velocities, lrs[step], momentum, weight_decay};
        if (tail.partials) {
            forward(&s, layers, 0, 1, params, 0, B, NULL);
            tail.B = B;
            const double loss = tail_in_pieces(&tail);
            losses[step] = loss;
            if (!isfinite(loss))
                break;
            tail_sums_job sums = {&tail, grads, grads + layers[0].n_in * tail.H, &sgd};
            const side_work side = {tail_sums, &sums};
            s.tail_sums = &side;
            backward(&s, layers, 0, 1, params, grads, 0, B, &sgd, NULL); /* the first LINEAR */
            continue;
        }
        forward(&s, layers, 0, L, params, 0, B, NULL);
        const double loss = loss_and_gradient(&s, loss_kind, L, O, T, 0, B, B);
        losses[step] = loss;
        if (!isfinite(loss))
            break;
        backward(&s, layers, s.first_linear, L, params, grads, 0, B, stepwise ? &sgd : NULL,
                 NULL);
        if (!stepwise)
            sgd_update(params, velocities, grads, P, sgd.lr, momentum, weight_decay);
    }
    gemm_free_buffers();
    scratch_free(&s);
    free(tail.partials);
    free(tail.piece_loss);
    free(tail.narrow_at);
    free(tail.narrow);
    return step;
}
