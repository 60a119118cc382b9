"""Cross-modal alignment on frozen-encoder features: contrastive dual encoders (CLIP, SigLIP), linear
and deep CCA, DeViSE, and a cycle-consistent cross-modal autoencoder.

One module per method family holds its model, its loss and what is particular to its evaluation;
``train.fit`` is the shared minibatch loop and ``retrieval`` the shared cross-modal retrieval."""
