"""Models: torchvision backbones with the report's heads, the STN and attention variants."""
