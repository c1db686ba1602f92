/* writer.h - placeholder; the writer module defines its API here. */
#ifndef APBUNDLE_WRITER_H
#define APBUNDLE_WRITER_H
#endif
