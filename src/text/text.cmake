# Sources of the text layer (tokenizer, chat format, streaming decode).
set(DR_TEXT_SOURCES
  src/text/utf8.c
  src/text/strmap.c
  src/text/bytelevel.c
  src/text/normalize.c
  src/text/pretok.c
  src/text/added.c
  src/text/bpe.c
  src/text/tokenizer.c
  src/text/encode.c
  src/text/stream.c
  src/text/chat.c
)
