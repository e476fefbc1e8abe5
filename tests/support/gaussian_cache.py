"""Writes an F16 safetensors KV cache of Gaussian noise, standard library only.

    python3 gaussian_cache.py OUT LAYERS HEADS TOKENS DIM SEED [TILE]

Tensors layers.<l>.key / .value of shape [heads, tokens, dim]. With TILE, each
head's first TILE tokens are drawn and repeated, so that long caches are quick
to make (the shell tests of signals and write failures use it)."""
import json, random, struct, sys


def write(path, layers, heads, tokens, dim, seed, tile=0):
    rnd = random.Random(seed)
    drawn = tile if tile else tokens
    tensors, blobs, offset = {}, [], 0
    for l in range(layers):
        for kind in ("key", "value"):
            per_head = [struct.pack("<%de" % (drawn * dim),
                                    *[rnd.gauss(0, 1) for _ in range(drawn * dim)])
                        for _ in range(heads)]
            blob = b"".join(h * (tokens // drawn) for h in per_head)
            tensors["layers.%d.%s" % (l, kind)] = {
                "dtype": "F16", "shape": [heads, tokens, dim],
                "data_offsets": [offset, offset + len(blob)]}
            blobs.append(blob)
            offset += len(blob)
    tensors["__metadata__"] = {"rope_theta": "10000", "rope_style": "interleaved", "pos0": "0"}
    header = json.dumps(tensors).encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header + b"".join(blobs))


if __name__ == "__main__":
    args = sys.argv[1:]
    if len(args) not in (6, 7):
        sys.exit(__doc__)
    nums = [int(a) for a in args[1:]]
    tokens, tile = nums[2], nums[5] if len(nums) == 6 else 0
    if tile and tokens % tile:
        sys.exit("gaussian_cache: TOKENS must be a multiple of TILE")
    write(args[0], *nums)
