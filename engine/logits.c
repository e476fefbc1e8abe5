/* Reading a row of logits: the greedy choice and the negative log-likelihood.
 * Every caller (generate, demo, bench, eval, tests) shares these, so "greedy"
 * and "NLL" mean the same thing everywhere. */
#include "session.h"

#include <math.h>

int32_t logits_argmax(const float *logits, uint32_t vocab)
{
    uint32_t best = 0;
    for (uint32_t i = 1; i < vocab; i++)
        if (logits[i] > logits[best])
            best = i;
    return (int32_t)best;
}

double logits_nll(const float *logits, uint32_t vocab, int32_t token)
{
    double max = logits[logits_argmax(logits, vocab)], sum = 0.0;
    for (uint32_t i = 0; i < vocab; i++)
        sum += exp((double)logits[i] - max);
    return log(sum) + max - (double)logits[token];
}
