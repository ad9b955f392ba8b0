"""Data: image folders and manifests, the split, decoded parts, transforms, defect boxes, the synthetic generator."""
