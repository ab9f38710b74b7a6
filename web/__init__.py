"""The page and embed.js, shipped inside the package as ``sponsord.web``."""
