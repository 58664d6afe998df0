/* narrow.c -- the three products of a LINEAR with few outputs (O <= NARROW_MAX_O: a
 * classifier head such as 128 -> 10) over the rows of one piece of a batch, on the
 * calling thread: the fused epoch's tail (train.c) runs them.
 *
 * Dimension letters: n rows of the piece, I in-features, O out-features.
 *
 * The blocked gemm (gemm.c) covers such a layer with mostly empty tiles (10 of 32
 * columns) or by transposing it, and at a piece's size its setup costs more than the
 * arithmetic (784-128-10, 32 rows: the three products took ~5 us).  Here the O outputs
 * of a row live in one vector of 16 floats (v16sf), and the weights are read in two
 * layouts made once per step by narrow_prepare: rows padded to 16 floats, and
 * transposed.  Each sum runs in a fixed order, the same on any thread.
 */
#include <string.h>

#include "internal.h"

enum {
    LANES = 16,      /* floats of a v16sf */
    FORWARD_ROWS = 8, /* rows of a piece computed together by narrow_forward */
    INPUT_ROWS = 2,    /* rows of dx computed together */
    INPUT_VECTORS = 4, /* vectors of each of those rows computed together */
};

typedef int v16si __attribute__((vector_size(64))); /* a comparison's lanes: 0 or all ones */

/* The helpers pass vectors through pointers: inlined into each clone, they then take
 * its instruction set's registers. */

/* *v = 16 floats from p. */
FS_INLINE void load16(v16sf *v, const float *p) { memcpy(v, p, sizeof *v); }

/* *v = the first `count` <= 16 floats from p, the rest of the vector 0.  (Unrolled
 * moves: a copy call of `count` floats cost more than a row's products.) */
FS_INLINE void load_first(v16sf *v, const float *p, int64_t count)
{
    float t[LANES];
#pragma GCC unroll 16
    for (int i = 0; i < LANES; i++)
        t[i] = i < count ? p[i] : 0.0f;
    memcpy(v, t, sizeof *v);
}

/* The first `count` <= 16 floats of *v into p. */
FS_INLINE void store_first(float *p, const v16sf *v, int64_t count)
{
    float t[LANES];
    memcpy(t, v, sizeof t);
#pragma GCC unroll 16
    for (int i = 0; i < LANES; i++)
        if (i < count)
            p[i] = t[i];
}

int64_t narrow_floats(int64_t I, int64_t O) { return I * LANES + O * I; }

/* w (I, O) laid out for the kernels below: wp (I, 16), each row of w padded with zeros,
 * then wt (O, I) = w.T, both in prepared (narrow_floats(I, O) floats).  Only w's own
 * floats are written: the caller zeroes the padding once, and it stays zero. */
FS_CLONES void narrow_prepare(float *restrict prepared, const float *restrict w, int64_t I,
                              int64_t O)
{
    float *wp = prepared, *wt = prepared + I * LANES;
    for (int64_t k = 0; k < I; k++) /* plain loops: a copy call a row cost 5x more */
        for (int64_t c = 0; c < O; c++)
            wp[k * LANES + c] = w[k * O + c];
    for (int64_t c = 0; c < O; c++)
        for (int64_t k = 0; k < I; k++)
            wt[c * I + k] = w[k * O + c];
}

/* out (n, O) = a (n, I) @ w + b (O,), w prepared.  Each output is the sum over k in
 * order, then plus the bias, as gemm's is. */
FS_CLONES void narrow_forward(float *restrict out, const float *restrict a,
                              const float *restrict prepared, const float *restrict b,
                              int64_t n, int64_t I, int64_t O)
{
    const float *wp = prepared;
    v16sf bias;
    load_first(&bias, b, O);
    int64_t r = 0;
    for (; r + FORWARD_ROWS <= n; r += FORWARD_ROWS) {
        const float *ar = a + r * I;
        v16sf acc[FORWARD_ROWS] = {{0}};
        for (int64_t k = 0; k < I; k++) {
            v16sf wk;
            load16(&wk, wp + k * LANES);
#pragma GCC unroll 8
            for (int i = 0; i < FORWARD_ROWS; i++)
                acc[i] += ar[i * I + k] * wk;
        }
#pragma GCC unroll 8
        for (int i = 0; i < FORWARD_ROWS; i++) {
            const v16sf row = acc[i] + bias;
            store_first(out + (r + i) * O, &row, O);
        }
    }
    for (; r < n; r++) {
        v16sf acc = {0};
        for (int64_t k = 0; k < I; k++) {
            v16sf wk;
            load16(&wk, wp + k * LANES);
            acc += a[r * I + k] * wk;
        }
        acc += bias;
        store_first(out + r * O, &acc, O);
    }
}

/* The first `count` <= 16 floats of *v into p where the gate's are above 0, else 0:
 * relu_backward's dx of the values *v, when the gate holds the ReLU's inputs. */
FS_INLINE void store_gated(float *p, const v16sf *v, const float *gate, int64_t count)
{
    if (count == LANES) { /* one vector: select by the gate's sign */
        v16sf g;
        load16(&g, gate);
        const v16sf zero = {0};
        const v16si above = g > zero; /* all ones where the gate is above 0 */
        const v16sf kept = (v16sf)((v16si)*v & above);
        memcpy(p, &kept, sizeof kept);
        return;
    }
    float t[LANES];
    memcpy(t, v, sizeof t);
    for (int64_t i = 0; i < count; i++)
        p[i] = gate[i] > 0.0f ? t[i] : 0.0f;
}

/* Rows [r, r + rows) of dx = dy @ w.T (rows <= INPUT_ROWS, a constant once inlined),
 * their columns [k0, k0 + INPUT_VECTORS * LANES): each load of wt serves every row of
 * the block (784-128-10's head, 32 rows, two rows a block: 1640 -> 1070 TSC cycles a
 * piece against one).  gate as in narrow_backward_input. */
FS_INLINE void input_block(float *restrict dx, const float *restrict dy,
                           const float *restrict wt, const float *restrict gate, int64_t r,
                           int rows, int64_t k0, int64_t I, int64_t O)
{
    v16sf acc[INPUT_ROWS][INPUT_VECTORS] = {{{0}}};
    for (int64_t c = 0; c < O; c++) {
        const float *row = wt + c * I + k0;
#pragma GCC unroll 8
        for (int v = 0; v < INPUT_VECTORS; v++) {
            v16sf wv;
            load16(&wv, row + v * LANES);
#pragma GCC unroll 2
            for (int i = 0; i < rows; i++)
                acc[i][v] += dy[(r + i) * O + c] * wv;
        }
    }
    for (int i = 0; i < rows; i++)
        for (int v = 0; v < INPUT_VECTORS; v++) {
            const int64_t at = (r + i) * I + k0 + v * LANES;
            if (gate)
                store_gated(dx + at, &acc[i][v], gate + at, LANES);
            else
                memcpy(dx + at, &acc[i][v], sizeof acc[i][v]);
        }
}

/* dx (n, I) = dy (n, O) @ w.T, w prepared: each element the sum over the O outputs in
 * order.  With gate (n, I) (else NULL), each element of dx where the gate's is not
 * above 0 is 0 instead: dx is then that of the ReLU before the layer, whose inputs the
 * gate holds. */
FS_CLONES void narrow_backward_input(float *restrict dx, const float *restrict dy,
                                     const float *restrict prepared,
                                     const float *restrict gate, int64_t n, int64_t I,
                                     int64_t O)
{
    const float *wt = prepared + I * LANES;
    const int64_t block_cols = INPUT_VECTORS * LANES, whole = I - I % block_cols;
    int64_t r = 0;
    for (; r + INPUT_ROWS <= n; r += INPUT_ROWS)
        for (int64_t k0 = 0; k0 < whole; k0 += block_cols)
            input_block(dx, dy, wt, gate, r, INPUT_ROWS, k0, I, O);
    for (; r < n; r++)
        for (int64_t k0 = 0; k0 < whole; k0 += block_cols)
            input_block(dx, dy, wt, gate, r, 1, k0, I, O);
    for (r = 0; r < n && whole < I; r++) { /* the columns past the whole blocks */
        const float *g = dy + r * O;
        for (int64_t k0 = whole; k0 < I; k0 += LANES) {
            const int64_t count = I - k0 < LANES ? I - k0 : LANES;
            v16sf acc = {0};
            for (int64_t c = 0; c < O; c++) {
                v16sf wv;
                load_first(&wv, wt + c * I + k0, count);
                acc += g[c] * wv;
            }
            if (gate)
                store_gated(dx + r * I + k0, &acc, gate + r * I + k0, count);
            else
                store_first(dx + r * I + k0, &acc, count);
        }
    }
}

/* dw (I, O) = a.T (I, n) @ dy (n, O): each element the sum over the rows in order. */
FS_CLONES void narrow_weight_gradient(float *restrict dw, const float *restrict a,
                                      const float *restrict dy, int64_t n, int64_t I,
                                      int64_t O)
{
    for (int64_t k0 = 0; k0 < I; k0 += LANES) {
        const int64_t count = I - k0 < LANES ? I - k0 : LANES;
        v16sf acc[NARROW_MAX_O] = {{0}}; /* acc[c]: dw[k0 .. k0 + count][c] */
        for (int64_t r = 0; r < n; r++) {
            v16sf ak;
            if (count == LANES)
                load16(&ak, a + r * I + k0);
            else
                load_first(&ak, a + r * I + k0, count);
            const float *g = dy + r * O;
#pragma GCC unroll 16
            for (int c = 0; c < NARROW_MAX_O; c++)
                if (c < O)
                    acc[c] += g[c] * ak;
        }
        float t[NARROW_MAX_O][LANES];
        memcpy(t, acc, sizeof t);
        for (int64_t k = 0; k < count; k++)
            for (int64_t c = 0; c < O; c++)
                dw[(k0 + k) * O + c] = t[c][k];
    }
}
