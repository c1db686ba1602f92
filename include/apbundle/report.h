/* report.h - placeholder; .stats/.metrics rendering. */
#ifndef APBUNDLE_REPORT_H
#define APBUNDLE_REPORT_H
#endif
