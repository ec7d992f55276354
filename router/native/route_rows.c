/* The folded router (router/model.py, FoldedRouter) scoring rows of SLM outputs in one call.
 *
 * Why C: at batch 1 on a CPU the router is ~30 tiny tensor ops whose cost is dispatch, not arithmetic (~0.2 ms
 * against ~0.03 ms of work). Plain loops over the same folded weights do the work in one call. Compiled at first
 * use by router/native_router.py; the torch path stays the reference and the fallback.
 *
 * Per row: features (argmax token, top-k log-probabilities: from the logits, or read as they are from rows that
 * already hold top-k log-probs, router/rows.py), then
 *   x = token_rows[token] + [hidden, topk] @ w_in
 *   per block: x = x + b2 + gelu(layer_norm(x) @ w1 + b1) @ w2      (erf GELU; norms without affine: folded)
 *   score = sigmoid(layer_norm(x) @ head_w + head_b)
 * Weights are row-major [in, out], as FoldedRouter stores them for addmm. */
#include <math.h>
#include <string.h>

#define MAX_BLOCKS 16

typedef struct {
    int vocab, hidden, top_k, width, inner, depth;
    const float *token_rows, *w_in, *head_w;
    const float *w1[MAX_BLOCKS], *b1[MAX_BLOCKS], *w2[MAX_BLOCKS], *b2[MAX_BLOCKS];
    float head_b;
    float eps[MAX_BLOCKS + 1];
} Router;

static void layer_norm(const float *x, float *y, int n, float eps) {
    float mean = 0.0f, var = 0.0f;
    for (int i = 0; i < n; i++) mean += x[i];
    mean /= (float)n;
    for (int i = 0; i < n; i++) var += (x[i] - mean) * (x[i] - mean);
    const float inv = 1.0f / sqrtf(var / (float)n + eps);
    for (int i = 0; i < n; i++) y[i] = (x[i] - mean) * inv;
}

/* y[n_out] += x[n_in] @ w[n_in, n_out] */
static void gemv_acc(const float *restrict x, int n_in, const float *restrict w, int n_out, float *restrict y) {
    for (int i = 0; i < n_in; i++) {
        const float xi = x[i];
        const float *restrict row = w + (long)i * n_out;
        for (int j = 0; j < n_out; j++) y[j] += xi * row[j];
    }
}

/* argmax (the first maximum, as torch.argmax) and the top-k log-probabilities, descending, into topk[k].
 * logprobs: the row holds log-probs already (top-k log-probs, -inf elsewhere): never renormalised. */
static int features(const float *logits, int vocab, int k, int logprobs, float *topk) {
    int best = 0;
    float mx = logits[0];
    for (int v = 1; v < vocab; v++)
        if (logits[v] > mx) { mx = logits[v]; best = v; }
    float lse = 0.0f;
    if (!logprobs) {
        float sum = 0.0f;
        for (int v = 0; v < vocab; v++) sum += expf(logits[v] - mx);
        lse = mx + logf(sum);
    }
    int filled = 0;
    for (int v = 0; v < vocab; v++) {  /* insertion into a sorted top-k: most logits fall below its last */
        const float l = logits[v];
        if (filled == k && !(l > topk[k - 1])) continue;
        int j = filled < k ? filled++ : k - 1;
        for (; j > 0 && topk[j - 1] < l; j--) topk[j] = topk[j - 1];
        topk[j] = l;
    }
    for (int i = 0; i < k; i++) topk[i] -= lse;
    return best;
}

static float score_row(const Router *r, const float *logits, int logprobs, const float *hidden) {
    const int W = r->width, E = r->inner;
    float topk[r->top_k], x[W], n[W], h[E];
    const int token = features(logits, r->vocab, r->top_k, logprobs, topk);
    memcpy(x, r->token_rows + (long)token * W, sizeof x);
    gemv_acc(hidden, r->hidden, r->w_in, W, x);
    gemv_acc(topk, r->top_k, r->w_in + (long)r->hidden * W, W, x);
    for (int b = 0; b < r->depth; b++) {
        layer_norm(x, n, W, r->eps[b]);
        memcpy(h, r->b1[b], sizeof h);
        gemv_acc(n, W, r->w1[b], E, h);
        for (int j = 0; j < E; j++) h[j] = 0.5f * h[j] * (1.0f + erff(h[j] * 0.70710678118654752f));
        for (int j = 0; j < W; j++) x[j] += r->b2[b][j];
        gemv_acc(h, E, r->w2[b], W, x);
    }
    layer_norm(x, n, W, r->eps[r->depth]);
    float out = r->head_b;
    for (int j = 0; j < W; j++) out += n[j] * r->head_w[j];
    return 1.0f / (1.0f + expf(-out));
}

/* scores[i] = the router's score for row i of logits [rows, vocab] and hidden [rows, hidden] (contiguous);
 * logprobs != 0: the rows are top-k log-probs (router/rows.py's TOPK_LOGPROBS), read as they are. */
void route_rows(const Router *r, int rows, const float *logits, int logprobs, const float *hidden, float *scores) {
    for (int i = 0; i < rows; i++)
        scores[i] = score_row(r, logits + (long)i * r->vocab, logprobs, hidden + (long)i * r->hidden);
}
