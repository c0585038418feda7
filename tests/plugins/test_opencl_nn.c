/* test_opencl_nn.c - the opencl plugin's nn kernels (opencl_nn.c): softmax family and the
 * optimizer steps. Part of test_opencl_kernels (main and helpers in test_opencl_kernels.c). */
#include "test_opencl.h"

/* x is (3,2,70): rows of 70 along the last dim; row 4 holds a NaN, which spreads over it. */
void softmax_family_matches_reference(void **state)
{
    (void)state;
    enum { ROWS = 6, L = 70, N = ROWS * L };
    float x[N], gr[N], y[N], got[N];
    unsigned seed = 13;
    for (int k = 0; k < N; k++) {
        x[k] = frand(&seed) * 4;
        gr[k] = frand(&seed);
    }
    x[4 * L + 9] = NAN;
    void *hx = buf_from(x, sizeof x), *hg = buf_from(gr, sizeof gr), *ho = buf_new(sizeof x);
    void *hy = buf_new(sizeof x);
    int64_t shape[3] = {3, 2, L}, last[8] = {2};
    tview vx = view(hx, 0, NB_DTYPE_F32, 3, shape, NULL), vo = view(ho, 0, NB_DTYPE_F32, 3, shape,
                                                                      NULL);
    tview vy = view(hy, 0, NB_DTYPE_F32, 3, shape, NULL);
    for (int take_log = 0; take_log < 2; take_log++) {
        assert_int_equal(run(take_log ? "log_softmax" : "softmax", NB_DTYPE_F32, &vy, 1, &vx,
                             NULL, last), NB_OK);
        buf_read(hy, y, sizeof y);
        for (int r = 0; r < ROWS; r++) {
            double m = -INFINITY, s = 0;
            for (int k = 0; k < L; k++)
                m = fmax(m, x[r * L + k]);
            for (int k = 0; k < L; k++)
                s += exp(x[r * L + k] - m);
            for (int k = 0; k < L; k++) {
                double d = x[r * L + k] - m, ref = take_log ? d - log(s) : exp(d) / s;
                if (r == 4)
                    ref = NAN;
                expect_close(take_log ? "log_softmax" : "softmax", (size_t)(r * L + k),
                             y[r * L + k], ref, 1e-6, 1e-5);
            }
        }
        /* backward from the output just computed */
        tview bin[2] = {view(hg, 0, NB_DTYPE_F32, 3, shape, NULL), vy};
        assert_int_equal(run(take_log ? "log_softmax_backward" : "softmax_backward",
                             NB_DTYPE_F32, &vo, 2, bin, NULL, last), NB_OK);
        buf_read(ho, got, sizeof got);
        for (int r = 0; r < ROWS; r++) {
            if (r == 4)
                continue;
            double s = 0;
            for (int k = 0; k < L; k++)
                s += take_log ? gr[r * L + k] : (double)gr[r * L + k] * y[r * L + k];
            for (int k = 0; k < L; k++) {
                double g = gr[r * L + k], yv = y[r * L + k];
                double ref = take_log ? g - exp(yv) * s : yv * (g - s);
                expect_close("softmax backward", (size_t)(r * L + k), got[r * L + k], ref, 1e-6,
                             1e-5);
            }
        }
    }
    /* relu_backward: grad where x > 0 */
    tview rin[2] = {view(hg, 0, NB_DTYPE_F32, 3, shape, NULL), vx};
    assert_int_equal(run("relu_backward", NB_DTYPE_F32, &vo, 2, rin, NULL, NULL), NB_OK);
    buf_read(ho, got, sizeof got);
    for (int k = 0; k < N; k++)
        expect_close("relu_backward", (size_t)k, got[k], x[k] > 0 ? gr[k] : 0, 0, 0);
    P->free(0, hx);
    P->free(0, hg);
    P->free(0, ho);
    P->free(0, hy);
}

/* Three Adam (or AdamW) steps from p with constant gradient g, in dtype t. */
static void adam_case(nb_dtype t, int decoupled, const float *p0, const float *g0, double tol)
{
    enum { N = 50 };
    double rp[N], rm[N] = {0}, rv[N] = {0};
    unsigned char p[N * 8], g[N * 8], zero[N * 8] = {0};
    for (int k = 0; k < N; k++) {
        rp[k] = p0[k];
        if (t == NB_DTYPE_F32) {
            ((float *)p)[k] = p0[k];
            ((float *)g)[k] = g0[k];
        } else {
            ((double *)p)[k] = p0[k];
            ((double *)g)[k] = g0[k];
        }
    }
    size_t bytes = N * esize[t];
    void *hp = buf_from(p, bytes), *hg = buf_from(g, bytes), *hm = buf_from(zero, bytes),
         *hv = buf_from(zero, bytes);
    int64_t shape[1] = {N};
    tview vp = view(hp, 0, t, 1, shape, NULL);
    tview in[3] = {view(hg, 0, t, 1, shape, NULL), view(hm, 0, t, 1, shape, NULL),
                   view(hv, 0, t, 1, shape, NULL)};
    double lr = 0.1, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.01;
    for (int step = 1; step <= 3; step++) {
        double f[8] = {lr, b1, b2, eps, wd};
        int64_t i[8] = {step, decoupled};
        assert_int_equal(run("adam_step", t, &vp, 3, in, f, i), NB_OK);
        for (int k = 0; k < N; k++) {
            double gv = g0[k];
            if (decoupled)
                rp[k] *= 1 - lr * wd;
            else
                gv += wd * rp[k];
            rm[k] = b1 * rm[k] + (1 - b1) * gv;
            rv[k] = b2 * rv[k] + (1 - b2) * gv * gv;
            double bc1 = 1 - pow(b1, step), bc2 = 1 - pow(b2, step);
            rp[k] -= lr / bc1 * rm[k] / (sqrt(rv[k]) / sqrt(bc2) + eps);
        }
    }
    buf_read(hp, p, bytes);
    for (int k = 0; k < N; k++)
        expect_close(decoupled ? "adamw" : "adam", (size_t)k,
                     t == NB_DTYPE_F32 ? ((float *)p)[k] : ((double *)p)[k], rp[k], tol, tol);
    P->free(0, hp);
    P->free(0, hg);
    P->free(0, hm);
    P->free(0, hv);
}

/* Three SGD steps (momentum 0.9, dampening 0.1, nesterov, weight decay) and three Adam and
 * AdamW steps, against the torch.optim update rules written out in C. */
void optimizer_steps_match_torch_rules(void **state)
{
    (void)state;
    enum { N = 50 };
    float p[N], g[N], b[N];
    double rp[N], rb[N];
    unsigned seed = 17;
    for (int k = 0; k < N; k++) {
        p[k] = frand(&seed);
        g[k] = frand(&seed);
        rp[k] = p[k];
        b[k] = 0;
        rb[k] = 0;
    }
    void *hp = buf_from(p, sizeof p), *hg = buf_from(g, sizeof g), *hb = buf_from(b, sizeof b);
    int64_t shape[1] = {N};
    tview vp = view(hp, 0, NB_DTYPE_F32, 1, shape, NULL);
    tview in[3] = {view(hg, 0, NB_DTYPE_F32, 1, shape, NULL),
                   view(hb, 0, NB_DTYPE_F32, 1, shape, NULL)};
    double lr = 0.1, mom = 0.9, damp = 0.1, wd = 0.01;
    for (int step = 0; step < 3; step++) {
        double f[8] = {lr, mom, damp, wd};
        int64_t i[8] = {1, step == 0};
        assert_int_equal(run("sgd_step", NB_DTYPE_F32, &vp, 2, in, f, i), NB_OK);
        for (int k = 0; k < N; k++) {
            double d = g[k] + wd * rp[k];
            rb[k] = step == 0 ? d : mom * rb[k] + (1 - damp) * d;
            rp[k] -= lr * (d + mom * rb[k]);
        }
    }
    buf_read(hp, p, sizeof p);
    for (int k = 0; k < N; k++)
        expect_close("sgd_step", (size_t)k, p[k], rp[k], 1e-6, 1e-5);

    for (int decoupled = 0; decoupled < 2; decoupled++) {
        /* f32 rounding compounds over the steps: the update is about lr per step */
        adam_case(NB_DTYPE_F32, decoupled, p, g, 1e-5);
        if (has_f64)
            adam_case(NB_DTYPE_F64, decoupled, p, g, 1e-12);
    }
    P->free(0, hp);
    P->free(0, hg);
    P->free(0, hb);
}
