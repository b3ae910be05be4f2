/*
 * aiorun/version.h - product version and plugin ABI version.
 *
 * The two numbers are separate on purpose (as in libcurl): the product version says which
 * release of aiorun this is; the ABI version says which plugins it can load.
 *   - ABI major: changes only when a plugin built against the old header could be misread.
 *     The host refuses a plugin whose ABI major differs from its own, before any plugin code runs.
 *   - ABI minor: grows when fields are appended to a structure. A host loads plugins of any
 *     minor up to and beyond its own, reading only the fields both sides know (struct_size).
 *     1.1 appended the descriptor's lookup; 1.2 the host service set_cost.
 */
#ifndef AIORUN_VERSION_H
#define AIORUN_VERSION_H

#define AIORUN_VERSION_MAJOR 0
#define AIORUN_VERSION_MINOR 1
#define AIORUN_VERSION_PATCH 0
#define AIORUN_VERSION_STRING "0.1.0"

#define AIORUN_ABI_MAJOR 1
#define AIORUN_ABI_MINOR 2

#endif
