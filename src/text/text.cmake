# Sources of the text layer (tokenizer, chat format, streaming decode).
set(DR_TEXT_SOURCES
)
