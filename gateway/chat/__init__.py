"""One chat completion: request preparation, template, token codec, detokenizer, stop strings, choice stream, the run."""
