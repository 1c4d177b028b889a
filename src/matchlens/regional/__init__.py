"""Regional descriptors (PS-Net, P1d): region layouts, ROI pooling on the backbone map, the regional kind."""
