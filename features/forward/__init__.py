"""Everything that runs a language model forward over texts: pooled SAE codes, behaviour labels, data parallelism."""
