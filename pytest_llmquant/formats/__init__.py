"""Model file formats the plugin reads and writes, apart from the schemes that use them."""
