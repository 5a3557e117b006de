"""Tools and output form: dialects, tool-call parsing and checks, guides, filler phrases, language."""
