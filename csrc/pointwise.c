/* pointwise.c -- activations, losses, the SGD update and the metrics.
 *
 * Dimension letters: B batch, C classes, n the element count of an elementwise kernel
 * (or of a whole (B, O) batch of a regression loss).
 *
 * Loops are written so GCC vectorizes them in each clone (FS_CLONES): exp is the
 * branch-free exp_nonpos() below instead of a libm call, and sums that may be
 * reordered say so with `#pragma omp simd reduction`.  Means are accumulated in double.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "internal.h"
#include "kernels.h"

/* exp(x) for x <= 0 (or NaN), within about 1 ulp; 0 below -104, where float32's
 * smallest subnormal already rounds to zero.  Branch-free, so loops over it vectorize.
 *
 * x = n ln2 + r with n an integer and |r| <= ln2 / 2 (ln2 split in two parts so that
 * n * LN2_HI is exact); exp(r) by its Taylor series to r^7 (error < 6e-9); 2^n as two
 * powers of two built from their exponent bits, so the result underflows gradually. */
FS_INLINE float exp_nonpos(float x)
{
    const float LOG2E = 1.44269504088896341f;
    const float LN2_HI = 0.693145751953125f;      /* ln 2 rounded to 12 significant bits */
    const float LN2_LO = 1.42860682030941723e-6f; /* ln 2 - LN2_HI */
    const float ROUND = 12582912.0f;              /* 1.5 * 2^23: t + ROUND - ROUND rounds t */

    float t = x * LOG2E;
    t = t > -150.0f ? t : -150.0f; /* also NaN: n stays an integer in -150 .. 0 */
    float n = (t + ROUND) - ROUND;
    float r = (x - n * LN2_HI) - n * LN2_LO; /* NaN stays NaN */

    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;

    int32_t e = (int32_t)n;
    int32_t e1 = e / 2, e2 = e - e1;
    uint32_t bits1 = (uint32_t)(e1 + 127) << 23, bits2 = (uint32_t)(e2 + 127) << 23;
    float scale1, scale2;
    memcpy(&scale1, &bits1, sizeof scale1);
    memcpy(&scale2, &bits2, sizeof scale2);
    float y = p * scale1 * scale2;
    return x < -104.0f ? 0.0f : y;
}

/* sigmoid(v) = 1 / (1 + exp(-v)) as exp(min(v, 0)) / (1 + exp(-|v|)): never overflows. */
FS_INLINE float sigmoid(float v)
{
    float e = exp_nonpos(-fabsf(v));
    return (v >= 0.0f ? 1.0f : e) / (1.0f + e);
}

/* tanh(v) within about 2 ulp relative for every float; exactly +-1 for |v| > 8.7,
 * never NaN for finite v.  Branch-free: both halves are computed and one is selected.
 * With a = |v| and the sign of v put back at the end:
 *   a < 0.625:  a + a^3 P(a^2), P a degree-4 polynomial fitted for relative error
 *               (exactly a for tiny a, where a^3 underflows);
 *   otherwise:  (1 - e) / (1 + e),  e = exp(-2a) <= 0.29, so 1 - e loses under a bit
 *               to cancellation. */
FS_INLINE float tanh_stable(float v)
{
    const float a = fabsf(v), a2 = a * a;
    float p = -5.704977083951235e-3f;
    p = p * a2 + 2.0639076828956604e-2f;
    p = p * a2 - 5.373971164226532e-2f;
    p = p * a2 + 1.3331441581249237e-1f;
    p = p * a2 - 3.333328068256378e-1f;
    const float near_zero = a + a * a2 * p;

    const float e = exp_nonpos(-2.0f * a);
    const float far = (1.0f - e) / (1.0f + e);
    return copysignf(a < 0.625f ? near_zero : far, v); /* tanh is odd; keeps -0.0 */
}

/* ------------------------------------------------------------- activations */

/* FS_FORWARD(name, F): name(out, x, n) sets out[i] = F of v = x[i];  any shape, n
 * elements, out may be x.  FS_BACKWARD(name, saved, F): name(dx, saved, dy, n) sets
 * dx[i] = F of s = saved[i] (the forward's input x or output y) and g = dy[i]. */
#define FS_FORWARD(name, F)                                                              \
    FS_CLONES void name(float *out, const float *x, int64_t n)                          \
    {                                                                                    \
        for (int64_t i = 0; i < n; i++) {                                                \
            const float v = x[i];                                                        \
            out[i] = (F);                                                                \
        }                                                                                \
    }
#define FS_BACKWARD(name, saved, F)                                                      \
    FS_CLONES void name(float *dx, const float *saved, const float *dy, int64_t n)      \
    {                                                                                    \
        for (int64_t i = 0; i < n; i++) {                                                \
            const float s = saved[i], g = dy[i];                                         \
            dx[i] = (F);                                                                 \
        }                                                                                \
    }

FS_FORWARD(sigmoid_forward, sigmoid(v))
FS_BACKWARD(sigmoid_backward, y, g * s * (1.0f - s))
FS_FORWARD(relu_forward, v <= 0.0f ? 0.0f : v) /* NaN stays NaN, as in max(x, 0) */
FS_BACKWARD(relu_backward, x, s > 0.0f ? g : 0.0f)
FS_FORWARD(tanh_forward, tanh_stable(v))
FS_BACKWARD(tanh_backward, y, g * ((1.0f - s) * (1.0f + s))) /* 1 - y^2 without cancellation */

void activation_forward(int64_t kind, float *out, const float *x, int64_t n)
{
    switch (kind) {
    case FS_RELU: relu_forward(out, x, n); break;
    case FS_SIGMOID: sigmoid_forward(out, x, n); break;
    case FS_TANH: tanh_forward(out, x, n); break;
    }
}

void activation_backward(int64_t kind, float *dx, const float *x, const float *y,
                         const float *dy, int64_t n)
{
    switch (kind) {
    case FS_RELU: relu_backward(dx, x, dy, n); break;
    case FS_SIGMOID: sigmoid_backward(dx, y, dy, n); break;
    case FS_TANH: tanh_backward(dx, y, dy, n); break;
    }
}

/* ------------------------------------------------------------------ losses */

/* FS_MEAN(name, acc_t, term): name(preds, targets, n) is the mean over i < n of term, of
 * p = preds[i] and t = targets[i], summed in acc_t (a vectorized reduction); 0 when
 * n == 0.  preds, targets (n,). */
#define FS_MEAN(name, acc_t, term)                                                       \
    FS_CLONES double name(const float *restrict preds, const float *restrict targets,   \
                          int64_t n)                                                     \
    {                                                                                    \
        acc_t total = 0;                                                                 \
        _Pragma("omp simd reduction(+ : total)")                                         \
        for (int64_t i = 0; i < n; i++) {                                                \
            const float p = preds[i], t = targets[i];                                    \
            total += (term);                                                             \
        }                                                                                \
        return n > 0 ? (double)total / (double)n : 0.0;                                  \
    }

FS_INLINE float mnist_term(float p, float t)
{
    const float s = sigmoid(p);
    return t == 1.0f ? 1.0f - s : s;
}
FS_MEAN(mnist_loss_forward, double, mnist_term(p, t))

/* mnist_loss_backward of n rows of a batch, inv_b 1 / the batch's rows. */
FS_CLONES static void mnist_loss_backward_rows(float *restrict dpreds, const float *restrict preds,
                                               const float *restrict targets, int64_t n,
                                               float inv_b)
{
    for (int64_t b = 0; b < n; b++) {
        float s = sigmoid(preds[b]);
        float slope = s * (1.0f - s) * inv_b;
        dpreds[b] = targets[b] == 1.0f ? -slope : slope;
    }
}

void mnist_loss_backward(float *restrict dpreds, const float *restrict preds,
                         const float *restrict targets, int64_t B)
{
    mnist_loss_backward_rows(dpreds, preds, targets, B, 1.0f / (float)B);
}

/* Row max of z (C,), and sum_c exp(z_c - max) into *sum: for long rows (C >= 16). */
FS_INLINE float row_max_and_sum(const float *restrict z, int64_t C, float *sum)
{
    float m = z[0];
    for (int64_t c = 1; c < C; c++)
        m = z[c] > m ? z[c] : m;
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t c = 0; c < C; c++)
        s += exp_nonpos(z[c] - m);
    *sum = s;
    return m;
}

enum { ROWS = 64 }; /* rows of short softmax rows handled together */

/* label when it names one of C classes, else -1 with *bad counted up (the cross-entropy
 * kernels return how many labels they skipped). */
FS_INLINE int64_t class_of(int64_t label, int64_t C, int64_t *bad)
{
    if (label >= 0 && label < C)
        return label;
    ++*bad;
    return -1;
}

/* Softmax pieces of a block of rows of z (rows, C), rows <= ROWS:  m[r] = max_c z[r, c],
 * e (rows, C) = exp(z - m[r]),  s[r] = sum_c e[r, c].  The exps run as one flat loop over
 * the block, so they vectorize even when C is a handful of classes. */
FS_INLINE void softmax_block(float *restrict e, float *restrict m, float *restrict s,
                             const float *restrict z, int64_t rows, int64_t C)
{
    for (int64_t r = 0; r < rows; r++) {
        const float *zr = z + r * C;
        float mr = zr[0];
        for (int64_t c = 1; c < C; c++)
            mr = zr[c] > mr ? zr[c] : mr;
        m[r] = mr;
        for (int64_t c = 0; c < C; c++)
            e[r * C + c] = zr[c] - mr;
    }
    for (int64_t i = 0; i < rows * C; i++)
        e[i] = exp_nonpos(e[i]);
    for (int64_t r = 0; r < rows; r++) {
        float sr = 0.0f;
        for (int64_t c = 0; c < C; c++)
            sr += e[r * C + c];
        s[r] = sr;
    }
}

FS_CLONES int64_t cross_entropy_forward(double *restrict loss, const float *restrict logits,
                                        const int64_t *restrict labels, int64_t B, int64_t C)
{
    if (C <= 0) {
        *loss = 0.0;
        return B; /* no class a label could name */
    }
    int64_t bad = 0;
    double total = 0.0;
    float e[ROWS * 16], m[ROWS], s[ROWS];
    for (int64_t b0 = 0; b0 < B; b0 += ROWS) {
        const int64_t rows = B - b0 < ROWS ? B - b0 : ROWS;
        const float *z = logits + b0 * C;
        if (C < 16) {
            softmax_block(e, m, s, z, rows, C);
        } else {
            for (int64_t r = 0; r < rows; r++)
                m[r] = row_max_and_sum(z + r * C, C, &s[r]);
        }
        for (int64_t r = 0; r < rows; r++) {
            const int64_t label = class_of(labels[b0 + r], C, &bad);
            if (label >= 0)
                total += log((double)s[r]) - ((double)z[r * C + label] - (double)m[r]);
        }
    }
    *loss = B > 0 ? total / (double)B : 0.0;
    return bad;
}

/* cross_entropy_backward of B rows of a batch, inv_b 1 / the batch's rows.  With loss
 * (else NULL), also cross_entropy_forward's mean loss of the rows, from the same softmax
 * of each row: the forward's bits for C < 16, where it too takes softmax_block's sums. */
FS_CLONES static int64_t cross_entropy_backward_rows(float *restrict dlogits,
                                                     const float *restrict logits,
                                                     const int64_t *restrict labels, int64_t B,
                                                     int64_t C, float inv_b,
                                                     double *restrict loss)
{
    if (C <= 0)
        return B; /* no class a label could name */
    int64_t bad = 0;
    double total = 0.0;
    float m[ROWS], s[ROWS];
    for (int64_t b0 = 0; b0 < B; b0 += ROWS) {
        const int64_t rows = B - b0 < ROWS ? B - b0 : ROWS;
        const float *z = logits + b0 * C;
        float *dz = dlogits + b0 * C;
        softmax_block(dz, m, s, z, rows, C);
        for (int64_t r = 0; r < rows; r++) {
            const float scale = inv_b / s[r]; /* softmax / B */
            for (int64_t c = 0; c < C; c++)
                dz[r * C + c] *= scale;
            const int64_t label = class_of(labels[b0 + r], C, &bad);
            if (label >= 0) {
                dz[r * C + label] -= inv_b;
                if (loss)
                    total += log((double)s[r]) - ((double)z[r * C + label] - (double)m[r]);
            }
        }
    }
    if (loss)
        *loss = B > 0 ? total / (double)B : 0.0;
    return bad;
}

int64_t cross_entropy_backward(float *restrict dlogits, const float *restrict logits,
                               const int64_t *restrict labels, int64_t B, int64_t C)
{
    return cross_entropy_backward_rows(dlogits, logits, labels, B, C, 1.0f / (float)B,
                                       NULL);
}

/* (p - t)^2 in double, but inf where it lies beyond the float32 range, as the other
 * backends' float32 arithmetic gives it (NaN stays NaN). */
FS_INLINE double squared_error(float p, float t)
{
    const double diff = (double)p - (double)t, square = diff * diff;
    return square > (double)FLT_MAX ? (double)INFINITY : square;
}
FS_MEAN(mse_forward, double, squared_error(p, t))

/* mse_backward of n elements of a batch, scale 2 / the batch's elements. */
FS_CLONES static void mse_backward_rows(float *restrict dpreds, const float *restrict preds,
                                        const float *restrict targets, int64_t n, float scale)
{
    for (int64_t i = 0; i < n; i++)
        dpreds[i] = (preds[i] - targets[i]) * scale;
}

void mse_backward(float *restrict dpreds, const float *restrict preds,
                  const float *restrict targets, int64_t n)
{
    mse_backward_rows(dpreds, preds, targets, n, n > 0 ? (float)(2.0 / (double)n) : 0.0f);
}

double loss_rows(int64_t loss_kind, float *dz, const float *z, const float *targets,
                 const int64_t *labels, int64_t rows, int64_t O, int64_t B)
{
    double loss = 0.0;
    switch (loss_kind) {
    case FS_MNIST_LOSS: /* O == 1: z and dz are (rows,) */
        mnist_loss_backward_rows(dz, z, targets, rows, 1.0f / (float)B);
        loss = mnist_loss_forward(z, targets, rows);
        break;
    case FS_CROSS_ENTROPY:
        if (O < 16) { /* one softmax for both */
            cross_entropy_backward_rows(dz, z, labels, rows, O, 1.0f / (float)B, &loss);
            break;
        }
        cross_entropy_backward_rows(dz, z, labels, rows, O, 1.0f / (float)B, NULL);
        cross_entropy_forward(&loss, z, labels, rows, O);
        break;
    case FS_MSE:
        mse_backward_rows(dz, z, targets, rows * O, (float)(2.0 / (double)(B * O)));
        loss = mse_forward(z, targets, rows * O);
        break;
    default:
        return NAN;
    }
    return rows == B ? loss : loss * ((double)rows / (double)B); /* their mean -> part */
}

/* --------------------------------------------------------------- optimizer */

FS_CLONES void sgd_update(float *param, float *velocity, const float *grad, int64_t n,
                          float lr, float momentum, float weight_decay)
{
    if (velocity == NULL) {
        for (int64_t i = 0; i < n; i++)
            param[i] -= lr * (grad[i] + weight_decay * param[i]);
    } else {
        for (int64_t i = 0; i < n; i++) {
            float v = momentum * velocity[i] + (grad[i] + weight_decay * param[i]);
            velocity[i] = v;
            param[i] -= lr * v;
        }
    }
}

/* ----------------------------------------------------------------- metrics */

FS_MEAN(binary_accuracy, int64_t, (p > 0.0f) == (t == 1.0f))

FS_CLONES double multiclass_accuracy(const float *restrict logits,
                                     const int64_t *restrict labels, int64_t B, int64_t C)
{
    int64_t hits = 0;
    for (int64_t b = 0; b < B; b++) {
        const float *z = logits + b * C;
        int64_t best = 0;
        for (int64_t c = 1; c < C; c++)
            if (z[c] > z[best])
                best = c;
        hits += best == labels[b];
    }
    return B > 0 ? (double)hits / (double)B : 0.0;
}

/* ------------------------------------------------------------ input checks */

/* Elements are checked in blocks of FINITE_BLOCK: branch-free inside (the loop
 * vectorizes), a test between blocks, so the first bad block ends the scan. */
#define FINITE_BLOCK 4096

/* FS_ALL_FINITE(name, float_t, uint_t, exponent): 1 when no element of x (n,) has all
 * its exponent bits set (Inf or NaN).  An element's bits are read as an integer:
 * (bits & exponent) is the largest value, exponent itself, only there. */
#define FS_ALL_FINITE(name, float_t, uint_t, exponent)                                    \
    FS_CLONES int name(const float_t *x, int64_t n)                                        \
    {                                                                                      \
        for (int64_t start = 0; start < n; start += FINITE_BLOCK) {                       \
            const int64_t end = n - start < FINITE_BLOCK ? n : start + FINITE_BLOCK;      \
            uint_t largest = 0;                                                            \
            for (int64_t i = start; i < end; i++) {                                        \
                uint_t bits;                                                               \
                memcpy(&bits, x + i, sizeof bits);                                         \
                bits &= exponent;                                                          \
                largest = bits > largest ? bits : largest;                                 \
            }                                                                              \
            if (largest == exponent)                                                       \
                return 0;                                                                  \
        }                                                                                  \
        return 1;                                                                          \
    }

FS_ALL_FINITE(all_finite_f32, float, uint32_t, UINT32_C(0x7f800000))
FS_ALL_FINITE(all_finite_f64, double, uint64_t, UINT64_C(0x7ff0000000000000))
