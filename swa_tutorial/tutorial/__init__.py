"""The tutorial's own tools: experiments that train small models on what the book derives."""
