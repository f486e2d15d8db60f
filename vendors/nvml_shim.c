/* libnvidia-ml.so.1 for mdevfs: NVIDIA's management library (NVML), every answer asked of the
 * mdevfs daemon whose control socket $MDEVFS_CONTROL names (vendors/nvml.py answers it from
 * the emulated host, so NVML and sysfs never disagree).
 *
 * Written from NVIDIA's public NVML API reference: the calls' names, arguments, return codes
 * and the layouts of the structures they fill; no NVIDIA header is used. Every other name the
 * library exports answers NOT_SUPPORTED (stubs generated from nvml_symbols.txt): a client that
 * binds every symbol at load (Go's cgo bindings) loads it, and nothing writes through a
 * pointer it was not asked to fill.
 *
 * Each call is one request on a fresh connection: {"command": "service", "name": "nvml",
 * "call": ..., "args": [...]} and one reply line {"ok": true, "result": [code, fields...]}.
 * Without $MDEVFS_CONTROL, or with no daemon there, nvmlInit answers DRIVER_NOT_LOADED, as
 * NVIDIA's library does on a host without its driver.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define NVML_API __attribute__((visibility("default")))

typedef int nvmlReturn_t;
enum {
	SUCCESS = 0, UNINITIALIZED = 1, INVALID_ARGUMENT = 2, NOT_SUPPORTED = 3,
	NOT_FOUND = 6, INSUFFICIENT_SIZE = 7, DRIVER_NOT_LOADED = 9, TIMEOUT = 10,
	ARGUMENT_VERSION_MISMATCH = 25, UNKNOWN = 999
};
enum { MAX_DEVICES = 64, MAX_FIELDS = 512, REPLY_BYTES = 65536, ASK_SECONDS = 10 };

/* ---- the daemon ------------------------------------------------------------------------- */

struct reply {
	int n;                  /* fields after the return code */
	char *f[MAX_FIELDS];    /* f[0] is the return code's text */
	char buf[REPLY_BYTES];
};

static void put_json(char *out, size_t room, size_t *len, const char *s)
{
	for (; *s && *len + 7 < room; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\')
			*len += (size_t)snprintf(out + *len, room - *len, "\\%c", c);
		else if (c < 0x20 || c >= 0x7f)
			*len += (size_t)snprintf(out + *len, room - *len, "\\u%04x", c);
		else
			out[(*len)++] = (char)c;
	}
}

/* the fields of {"ok": true, "result": [ ... ]}, parsed in place; -1 if not that, whole */
static int parse(struct reply *r)
{
	char *p = strstr(r->buf, "\"result\": [");
	if (!strstr(r->buf, "\"ok\": true") || !p)
		return -1;
	p += strlen("\"result\": [");
	r->n = -1;
	for (;;) {
		while (*p == ' ' || *p == ',')
			p++;
		if (*p == ']')
			return 0;
		if (!*p || r->n + 1 >= MAX_FIELDS)
			return -1;  /* cut short, or more fields than any answer has */
		char *out = p, *start = p;
		if (*p == '"') {
			start = out = ++p;
			while (*p && *p != '"') {
				if (*p != '\\') {
					*out++ = *p++;
					continue;
				}
				p++;
				switch (*p) {
				case 'n': *out++ = '\n'; break;
				case 't': *out++ = '\t'; break;
				case 'r': *out++ = '\r'; break;
				case 'b': *out++ = '\b'; break;
				case 'f': *out++ = '\f'; break;
				case 'u': {
					unsigned int code = 0;
					for (int i = 1; i <= 4; i++)
						if (!isxdigit((unsigned char)p[i]))
							return -1;  /* cut short: never past the end */
					if (sscanf(p + 1, "%4x", &code) != 1)
						return -1;
					*out++ = code < 0x80 ? (char)code : '?';
					p += 4;
					break;
				}
				case '\0': return -1;
				default: *out++ = *p;
				}
				p++;
			}
			if (*p != '"')
				return -1;
			p++;
		} else {
			while (*p && *p != ',' && *p != ']')
				p++;
			out = p;
		}
		char end = *p;
		*out = '\0';
		r->f[++r->n] = start;
		if (end == ']')
			return 0;
		if (!end)
			return -1;  /* a number cut short */
		if (out == p)
			p++;
	}
}

/* ask the daemon at control socket `path` (NULL: $MDEVFS_CONTROL) for `call`: its code */
static nvmlReturn_t ask_at(const char *path, struct reply *r, const char *call, int argc,
			   const char *const *argv)
{
	if (!path)
		path = getenv("MDEVFS_CONTROL");
	if (!path || strlen(path) >= sizeof(((struct sockaddr_un *)0)->sun_path))
		return DRIVER_NOT_LOADED;
	char req[8192];
	size_t len = 0;
	len += (size_t)snprintf(req, sizeof req,
				"{\"command\": \"service\", \"name\": \"nvml\", \"call\": \"%s\", "
				"\"args\": [", call);
	for (int i = 0; i < argc; i++) {
		if (len + 8 >= sizeof req)
			return INVALID_ARGUMENT;
		req[len++] = i ? ',' : ' ';
		req[len++] = '"';
		put_json(req, sizeof req - 4, &len, argv[i]);
		req[len++] = '"';
	}
	len += (size_t)snprintf(req + len, sizeof req - len, "]}\n");
	if (len >= sizeof req)
		return INVALID_ARGUMENT;
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return UNKNOWN;
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	strcpy(addr.sun_path, path);
	if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
		close(fd);
		return DRIVER_NOT_LOADED;
	}
	/* a daemon stopped mid-call is TIMEOUT, not a caller hung for ever */
	struct timeval wait = { .tv_sec = ASK_SECONDS };
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &wait, sizeof wait);
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &wait, sizeof wait);
	size_t sent = 0, got = 0;
	int whole = 0;
	nvmlReturn_t code = UNKNOWN;
	while (sent < len) {  /* MSG_NOSIGNAL: a daemon gone is an answer, not a SIGPIPE */
		ssize_t n = send(fd, req + sent, len - sent, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			code = n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) ? TIMEOUT : UNKNOWN;
			goto out;
		}
		sent += (size_t)n;
	}
	while (!whole && got + 1 < sizeof r->buf) {
		ssize_t n = read(fd, r->buf + got, sizeof r->buf - 1 - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			code = TIMEOUT;
			goto out;
		}
		if (n <= 0)
			break;
		whole = memchr(r->buf + got, '\n', (size_t)n) != NULL;
		got += (size_t)n;
	}
	r->buf[got] = '\0';
	if (whole && parse(r) == 0 && r->n >= 0)
		code = atoi(r->f[0]);
out:
	close(fd);
	return code;
}

static nvmlReturn_t ask(struct reply *r, const char *call, int argc, const char *const *argv)
{
	return ask_at(NULL, r, call, argc, argv);
}

/* a call whose one argument is a number: a device index, a type, an instance */
static nvmlReturn_t ask_number(struct reply *r, const char *call, unsigned long long n)
{
	char arg[24];
	snprintf(arg, sizeof arg, "%llu", n);
	const char *argv[] = { arg };
	return ask(r, call, 1, argv);
}

static unsigned long long num(const struct reply *r, int i)
{
	return i <= r->n ? strtoull(r->f[i], NULL, 10) : 0;
}

static const char *text(const struct reply *r, int i)
{
	return i <= r->n ? r->f[i] : "";
}

/* a string into a caller's buffer of `length` bytes */
static nvmlReturn_t put(char *dst, unsigned int length, const char *s)
{
	size_t need = strlen(s) + 1;
	if (!dst)
		return INVALID_ARGUMENT;
	if (length < need)
		return INSUFFICIENT_SIZE;
	memcpy(dst, s, need);
	return SUCCESS;
}

/* ---- init and errors -------------------------------------------------------------------- */

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int initialized;

static int ready(void)
{
	pthread_mutex_lock(&lock);
	int up = initialized > 0;
	pthread_mutex_unlock(&lock);
	return up;
}

#define NEED_INIT do { if (!ready()) return UNINITIALIZED; } while (0)

NVML_API nvmlReturn_t nvmlInitWithFlags(unsigned int flags)
{
	(void)flags;
	struct reply r;
	nvmlReturn_t code = ask(&r, "init", 0, NULL);
	if (code == SUCCESS) {
		pthread_mutex_lock(&lock);
		initialized++;
		pthread_mutex_unlock(&lock);
	}
	return code == UNKNOWN ? DRIVER_NOT_LOADED : code;
}

NVML_API nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }
NVML_API nvmlReturn_t nvmlInit(void) { return nvmlInitWithFlags(0); }

NVML_API nvmlReturn_t nvmlShutdown(void)
{
	pthread_mutex_lock(&lock);
	if (initialized > 0)
		initialized--;
	pthread_mutex_unlock(&lock);
	return SUCCESS;
}

NVML_API const char *nvmlErrorString(nvmlReturn_t code)
{
	static const char *const names[] = {
		"Success", "Uninitialized", "Invalid Argument", "Not Supported",
		"Insufficient Permissions", "Already Initialized", "Not Found", "Insufficient Size",
		"Insufficient External Power", "Driver Not Loaded", "Timeout",
		"Interrupt Request Issue", "NVML Shared Library Not Found", "Function Not Found",
		"Corrupted infoROM", "GPU is lost", "GPU requires reset",
		"GPU access blocked by the operating system", "Driver/library version mismatch",
		"In use by another client", "Insufficient Memory", "No data",
		"vGPU ECC not supported", "Insufficient Resources", "Invalid Frequency",
		"Argument version mismatch", "Requested functionality has been deprecated",
		"System is not in ready state", "No supported GPUs were found",
		"Resource not in correct state to perform requested operation",
	};
	if (code >= 0 && (size_t)code < sizeof names / sizeof names[0])
		return names[code];
	return "Unknown Error";
}

/* ---- the system ------------------------------------------------------------------------- */

static nvmlReturn_t system_text(const char *call, char *out, unsigned int length)
{
	struct reply r;
	nvmlReturn_t code = ask(&r, call, 0, NULL);
	return code ? code : put(out, length, text(&r, 1));
}

NVML_API nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length)
{
	NEED_INIT;
	return system_text("driver_version", version, length);
}

NVML_API nvmlReturn_t nvmlSystemGetNVMLVersion(char *version, unsigned int length)
{
	return system_text("nvml_version", version, length);
}

NVML_API nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *version)
{
	NEED_INIT;
	if (!version)
		return INVALID_ARGUMENT;
	struct reply r;
	nvmlReturn_t code = ask(&r, "cuda_version", 0, NULL);
	if (!code)
		*version = (int)num(&r, 1);
	return code;
}

NVML_API nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *version)
{
	return nvmlSystemGetCudaDriverVersion(version);
}

/* ---- devices ---------------------------------------------------------------------------- */

/* a handle is the address of one slot: its index is where it lies in the array */
struct nvmlDevice_st { char slot; };
typedef struct nvmlDevice_st *nvmlDevice_t;
static struct nvmlDevice_st devices[MAX_DEVICES];

static nvmlReturn_t handle_of(unsigned long long index, nvmlDevice_t *device)
{
	if (index >= MAX_DEVICES)
		return INVALID_ARGUMENT;
	*device = &devices[index];
	return SUCCESS;
}

/* the index of a handle this library gave, or -1 */
static int index_of(nvmlDevice_t device)
{
	if (device < devices || device >= devices + MAX_DEVICES)
		return -1;
	return (int)(device - devices);
}

NVML_API nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count)
{
	NEED_INIT;
	if (!count)
		return INVALID_ARGUMENT;
	struct reply r;
	nvmlReturn_t code = ask(&r, "count", 0, NULL);
	if (!code)
		*count = (unsigned int)num(&r, 1);
	return code;
}

NVML_API nvmlReturn_t nvmlDeviceGetCount(unsigned int *count) { return nvmlDeviceGetCount_v2(count); }

NVML_API nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device)
{
	unsigned int count;
	nvmlReturn_t code = nvmlDeviceGetCount_v2(&count);
	if (code)
		return code;
	if (!device || index >= count)
		return INVALID_ARGUMENT;
	return handle_of(index, device);
}

NVML_API nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int index, nvmlDevice_t *device)
{
	return nvmlDeviceGetHandleByIndex_v2(index, device);
}

static nvmlReturn_t handle_by(const char *call, const char *key, nvmlDevice_t *device)
{
	NEED_INIT;
	if (!key || !device)
		return INVALID_ARGUMENT;
	struct reply r;
	nvmlReturn_t code = ask(&r, call, 1, &key);
	return code ? code : handle_of(num(&r, 1), device);
}

NVML_API nvmlReturn_t nvmlDeviceGetHandleByPciBusId_v2(const char *bus_id, nvmlDevice_t *device)
{
	return handle_by("by_bus_id", bus_id, device);
}

NVML_API nvmlReturn_t nvmlDeviceGetHandleByPciBusId(const char *bus_id, nvmlDevice_t *device)
{
	return handle_by("by_bus_id", bus_id, device);
}

NVML_API nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device)
{
	return handle_by("by_uuid", uuid, device);
}

/* the "device" reply: 1 name, 2 uuid, 3 minor, 4 domain, 5 bus, 6 slot, 7 vendor, 8 device,
 * 9 subsystem vendor, 10 subsystem device, 11 total bytes, 12 used bytes, 13 virtualization
 * mode, 14 host vGPU mode, 15 current MIG mode (-1: none), 16 pending MIG mode */
static nvmlReturn_t device_facts(nvmlDevice_t device, struct reply *r)
{
	NEED_INIT;
	int index = index_of(device);
	if (index < 0)
		return INVALID_ARGUMENT;
	return ask_number(r, "device", (unsigned long long)index);
}

NVML_API nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length)
{
	struct reply r;
	nvmlReturn_t code = device_facts(device, &r);
	return code ? code : put(name, length, text(&r, 1));
}

NVML_API nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length)
{
	struct reply r;
	nvmlReturn_t code = device_facts(device, &r);
	return code ? code : put(uuid, length, text(&r, 2));
}

static nvmlReturn_t device_number(nvmlDevice_t device, int field, unsigned int *out)
{
	struct reply r;
	nvmlReturn_t code = device_facts(device, &r);
	if (code)
		return code;
	if (!out)
		return INVALID_ARGUMENT;
	*out = (unsigned int)num(&r, field);
	return SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceGetMinorNumber(nvmlDevice_t device, unsigned int *minor)
{
	return device_number(device, 3, minor);
}

/* nvmlPciInfo_t (68 bytes, filled by _v3) and the legacy layout of _v1/_v2 (52 bytes) */
struct pci_info {
	char bus_id_legacy[16];
	unsigned int domain, bus, device, pci_device_id, pci_subsystem_id;
	char bus_id[32];
};
struct pci_info_legacy {
	char bus_id[16];
	unsigned int domain, bus, device, pci_device_id, pci_subsystem_id, reserved[4];
};

static nvmlReturn_t pci(nvmlDevice_t device, struct pci_info *out)
{
	struct reply r;
	nvmlReturn_t code = device_facts(device, &r);
	if (code)
		return code;
	if (!out)
		return INVALID_ARGUMENT;
	memset(out, 0, sizeof *out);
	out->domain = (unsigned int)num(&r, 4);
	out->bus = (unsigned int)num(&r, 5);
	out->device = (unsigned int)num(&r, 6);
	out->pci_device_id = (unsigned int)(num(&r, 8) << 16 | num(&r, 7));
	out->pci_subsystem_id = (unsigned int)(num(&r, 10) << 16 | num(&r, 9));
	snprintf(out->bus_id_legacy, sizeof out->bus_id_legacy, "%04X:%02X:%02X.0",
		 out->domain & 0xffff, out->bus, out->device);
	snprintf(out->bus_id, sizeof out->bus_id, "%08X:%02X:%02X.0", out->domain, out->bus,
		 out->device);
	return SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t device, struct pci_info *out)
{
	return pci(device, out);
}

NVML_API nvmlReturn_t nvmlDeviceGetPciInfo_v2(nvmlDevice_t device, struct pci_info_legacy *out)
{
	struct pci_info info;
	nvmlReturn_t code = pci(device, &info);
	if (code)
		return code;
	if (!out)
		return INVALID_ARGUMENT;
	memset(out, 0, sizeof *out);
	memcpy(out->bus_id, info.bus_id_legacy, sizeof out->bus_id);
	out->domain = info.domain;
	out->bus = info.bus;
	out->device = info.device;
	out->pci_device_id = info.pci_device_id;
	out->pci_subsystem_id = info.pci_subsystem_id;
	return SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceGetPciInfo(nvmlDevice_t device, struct pci_info_legacy *out)
{
	return nvmlDeviceGetPciInfo_v2(device, out);
}

struct memory { unsigned long long total, free, used; };
struct memory_v2 { unsigned int version; unsigned long long total, reserved, free, used; };

NVML_API nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, struct memory *out)
{
	struct reply r;
	nvmlReturn_t code = device_facts(device, &r);
	if (code)
		return code;
	if (!out)
		return INVALID_ARGUMENT;
	out->total = num(&r, 11);
	out->used = num(&r, 12);
	out->free = out->total - out->used;
	return SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, struct memory_v2 *out)
{
	struct memory v1;
	if (out && out->version != (unsigned int)(sizeof *out | 2u << 24))
		return ARGUMENT_VERSION_MISMATCH;
	nvmlReturn_t code = nvmlDeviceGetMemoryInfo(device, &v1);
	if (code)
		return code;
	if (!out)
		return INVALID_ARGUMENT;
	out->total = v1.total;
	out->reserved = 0;
	out->free = v1.free;
	out->used = v1.used;
	return SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceGetVirtualizationMode(nvmlDevice_t device, unsigned int *mode)
{
	return device_number(device, 13, mode);
}

NVML_API nvmlReturn_t nvmlDeviceGetHostVgpuMode(nvmlDevice_t device, unsigned int *mode)
{
	return device_number(device, 14, mode);
}

NVML_API nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t device, unsigned int *current,
					   unsigned int *pending)
{
	struct reply r;
	nvmlReturn_t code = device_facts(device, &r);
	if (code)
		return code;
	if (!current || !pending)
		return INVALID_ARGUMENT;
	if (atoi(text(&r, 15)) < 0)
		return NOT_SUPPORTED;
	*current = (unsigned int)num(&r, 15);
	*pending = (unsigned int)num(&r, 16);
	return SUCCESS;
}

/* ---- vGPU types ------------------------------------------------------------------------- */

/* a list call by device: decided by *count, never by whether the array is NULL */
static nvmlReturn_t device_list(const char *call, nvmlDevice_t device, unsigned int *count,
				unsigned int *ids)
{
	NEED_INIT;
	int index = index_of(device);
	if (index < 0 || !count)
		return INVALID_ARGUMENT;
	struct reply r;
	nvmlReturn_t code = ask_number(&r, call, (unsigned long long)index);
	if (code)
		return code;
	unsigned int need = (unsigned int)r.n;
	if (*count < need) {
		*count = need;
		return INSUFFICIENT_SIZE;
	}
	if (need && !ids)
		return INVALID_ARGUMENT;
	for (unsigned int i = 0; i < need; i++)
		ids[i] = (unsigned int)num(&r, (int)i + 1);
	*count = need;
	return SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceGetSupportedVgpus(nvmlDevice_t device, unsigned int *count,
						  unsigned int *ids)
{
	return device_list("supported", device, count, ids);
}

NVML_API nvmlReturn_t nvmlDeviceGetCreatableVgpus(nvmlDevice_t device, unsigned int *count,
						  unsigned int *ids)
{
	return device_list("creatable", device, count, ids);
}

NVML_API nvmlReturn_t nvmlDeviceGetActiveVgpus(nvmlDevice_t device, unsigned int *count,
					       unsigned int *instances)
{
	return device_list("active", device, count, instances);
}

/* the "type" reply: 1 name, 2 class, 3 frame buffer bytes, 4 per VM, 5 heads, 6 x, 7 y,
 * 8 licence, 9 guest device id, 10 guest subsystem id, 11 GPU instance profile */
static nvmlReturn_t type_facts(unsigned int type, struct reply *r)
{
	NEED_INIT;
	if (!type)
		return INVALID_ARGUMENT;
	return ask_number(r, "type", (unsigned long long)type);
}

static nvmlReturn_t type_text(unsigned int type, int field, char *out, unsigned int *size)
{
	struct reply r;
	nvmlReturn_t code = type_facts(type, &r);
	if (code)
		return code;
	if (!size)
		return INVALID_ARGUMENT;
	unsigned int need = (unsigned int)strlen(text(&r, field)) + 1;
	if (*size < need) {
		*size = need;
		return INSUFFICIENT_SIZE;
	}
	*size = need;
	return put(out, need, text(&r, field));
}

NVML_API nvmlReturn_t nvmlVgpuTypeGetName(unsigned int type, char *name, unsigned int *size)
{
	return type_text(type, 1, name, size);
}

NVML_API nvmlReturn_t nvmlVgpuTypeGetClass(unsigned int type, char *cls, unsigned int *size)
{
	return type_text(type, 2, cls, size);
}

NVML_API nvmlReturn_t nvmlVgpuTypeGetLicense(unsigned int type, char *license, unsigned int size)
{
	struct reply r;
	nvmlReturn_t code = type_facts(type, &r);
	return code ? code : put(license, size, text(&r, 8));
}

static nvmlReturn_t type_number(unsigned int type, int field, unsigned long long *out)
{
	struct reply r;
	nvmlReturn_t code = type_facts(type, &r);
	if (code)
		return code;
	if (!out)
		return INVALID_ARGUMENT;
	*out = num(&r, field);
	return SUCCESS;
}

/* a type's field that NVML hands out as an unsigned int */
static nvmlReturn_t type_uint(unsigned int type, int field, unsigned int *out)
{
	unsigned long long n;
	nvmlReturn_t code = type_number(type, field, out ? &n : NULL);
	if (!code)
		*out = (unsigned int)n;
	return code;
}

NVML_API nvmlReturn_t nvmlVgpuTypeGetFramebufferSize(unsigned int type, unsigned long long *size)
{
	return type_number(type, 3, size);
}

NVML_API nvmlReturn_t nvmlVgpuTypeGetMaxInstancesPerVm(unsigned int type, unsigned int *count)
{
	return type_uint(type, 4, count);
}

NVML_API nvmlReturn_t nvmlVgpuTypeGetNumDisplayHeads(unsigned int type, unsigned int *heads)
{
	return type_uint(type, 5, heads);
}

NVML_API nvmlReturn_t nvmlVgpuTypeGetResolution(unsigned int type, unsigned int head,
						unsigned int *x, unsigned int *y)
{
	struct reply r;
	nvmlReturn_t code = type_facts(type, &r);
	if (code)
		return code;
	if (!x || !y || head >= num(&r, 5))
		return INVALID_ARGUMENT;
	*x = (unsigned int)num(&r, 6);
	*y = (unsigned int)num(&r, 7);
	return SUCCESS;
}

NVML_API nvmlReturn_t nvmlVgpuTypeGetDeviceID(unsigned int type, unsigned long long *device_id,
					      unsigned long long *subsystem_id)
{
	struct reply r;
	nvmlReturn_t code = type_facts(type, &r);
	if (code)
		return code;
	if (!device_id || !subsystem_id)
		return INVALID_ARGUMENT;
	*device_id = num(&r, 9);
	*subsystem_id = num(&r, 10);
	return SUCCESS;
}

NVML_API nvmlReturn_t nvmlVgpuTypeGetGpuInstanceProfileId(unsigned int type, unsigned int *id)
{
	return type_uint(type, 11, id);
}

NVML_API nvmlReturn_t nvmlVgpuTypeGetMaxInstances(nvmlDevice_t device, unsigned int type,
						  unsigned int *count)
{
	NEED_INIT;
	int index = index_of(device);
	if (index < 0 || !count || !type)
		return INVALID_ARGUMENT;
	char arg[16], targ[16];
	snprintf(arg, sizeof arg, "%d", index);
	snprintf(targ, sizeof targ, "%u", type);
	const char *argv[] = { arg, targ };
	struct reply r;
	nvmlReturn_t code = ask(&r, "max_instances", 2, argv);
	if (!code)
		*count = (unsigned int)num(&r, 1);
	return code;
}

/* ---- vGPU instances --------------------------------------------------------------------- */

/* the "instance" reply: 1 vGPU UUID, 2 mdev UUID ("" for a VF's vGPU), 3 type, 4 VM id,
 * 5 VM id type, 6 frame buffer in use */
static nvmlReturn_t instance_facts(unsigned int instance, struct reply *r)
{
	NEED_INIT;
	if (!instance)
		return INVALID_ARGUMENT;
	return ask_number(r, "instance", (unsigned long long)instance);
}

NVML_API nvmlReturn_t nvmlVgpuInstanceGetUUID(unsigned int instance, char *uuid, unsigned int size)
{
	struct reply r;
	nvmlReturn_t code = instance_facts(instance, &r);
	return code ? code : put(uuid, size, text(&r, 1));
}

NVML_API nvmlReturn_t nvmlVgpuInstanceGetMdevUUID(unsigned int instance, char *uuid,
						  unsigned int size)
{
	struct reply r;
	nvmlReturn_t code = instance_facts(instance, &r);
	if (code)
		return code;
	if (!*text(&r, 2))
		return NOT_SUPPORTED;  /* a VF's vGPU: no mdev */
	return put(uuid, size, text(&r, 2));
}

NVML_API nvmlReturn_t nvmlVgpuInstanceGetType(unsigned int instance, unsigned int *type)
{
	struct reply r;
	nvmlReturn_t code = instance_facts(instance, &r);
	if (code)
		return code;
	if (!type)
		return INVALID_ARGUMENT;
	*type = (unsigned int)num(&r, 3);
	return SUCCESS;
}

NVML_API nvmlReturn_t nvmlVgpuInstanceGetVmID(unsigned int instance, char *vm_id, unsigned int size,
					      unsigned int *type)
{
	struct reply r;
	nvmlReturn_t code = instance_facts(instance, &r);
	if (code)
		return code;
	if (!type)
		return INVALID_ARGUMENT;
	/* an id is at most 80 bytes: pynvml says 128 of an 80-byte buffer */
	code = put(vm_id, size < 80 ? size : 80, text(&r, 4));
	if (!code)
		*type = (unsigned int)num(&r, 5);
	return code;
}

NVML_API nvmlReturn_t nvmlVgpuInstanceGetFbUsage(unsigned int instance, unsigned long long *usage)
{
	struct reply r;
	nvmlReturn_t code = instance_facts(instance, &r);
	if (code)
		return code;
	if (!usage)
		return INVALID_ARGUMENT;
	*usage = num(&r, 6);
	return SUCCESS;
}

/* ---- metadata, compatibility, versions ---------------------------------------------------- */

enum { OPAQUE_MAX = 256, VGPU_META_HEAD = 208, PGPU_META_HEAD = 124 };

struct vgpu_metadata {  /* nvmlVgpuMetadata_t, opaqueData from offset 208 */
	unsigned int version, revision, guest_info_state;
	char guest_driver_version[80], host_driver_version[80];
	unsigned int reserved[6], virtualization_caps, guest_vgpu_version, opaque_size;
	char opaque[];
};

struct pgpu_metadata {  /* nvmlVgpuPgpuMetadata_t, opaqueData from offset 124 */
	unsigned int version, revision;
	char host_driver_version[80];
	unsigned int virtualization_caps, reserved[5], range_min, range_max, opaque_size;
	char opaque[];
};

_Static_assert(__builtin_offsetof(struct vgpu_metadata, opaque) == VGPU_META_HEAD, "vGPU layout");
_Static_assert(__builtin_offsetof(struct pgpu_metadata, opaque) == PGPU_META_HEAD, "pGPU layout");

/* a metadata call's size protocol: nothing is written while the caller only asks the size */
static nvmlReturn_t sized(void *md, unsigned int *size, unsigned int need)
{
	if (*size < need) {
		*size = need;
		return INSUFFICIENT_SIZE;
	}
	if (!md)
		return INVALID_ARGUMENT;
	memset(md, 0, need);
	*size = need;
	return SUCCESS;
}

/* a metadata call: the daemon's reply, whose field ``at`` is the opaque data (at most
 * OPAQUE_MAX bytes, its length in *opaque), then the size protocol for a struct whose
 * opaque data starts at ``head`` */
static nvmlReturn_t ask_metadata(struct reply *r, const char *call, unsigned long long arg,
				 int at, void *md, unsigned int *size, unsigned int head,
				 size_t *opaque)
{
	nvmlReturn_t code = ask_number(r, call, arg);
	if (code)
		return code;
	*opaque = strlen(text(r, at));
	if (*opaque > OPAQUE_MAX)
		return UNKNOWN;
	return sized(md, size, head + (unsigned int)*opaque);
}

NVML_API nvmlReturn_t nvmlVgpuInstanceGetMetadata(unsigned int instance, struct vgpu_metadata *md,
						  unsigned int *size)
{
	NEED_INIT;
	if (!instance || !size)
		return INVALID_ARGUMENT;
	struct reply r;
	size_t opaque;
	nvmlReturn_t code = ask_metadata(&r, "instance_metadata", instance, 3, md, size,
					 VGPU_META_HEAD, &opaque);
	if (code)
		return code;
	md->version = md->revision = 1;
	snprintf(md->host_driver_version, sizeof md->host_driver_version, "%s", text(&r, 1));
	md->virtualization_caps = (unsigned int)num(&r, 2);
	md->opaque_size = (unsigned int)opaque;
	memcpy(md->opaque, text(&r, 3), opaque);
	return SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceGetVgpuMetadata(nvmlDevice_t device, struct pgpu_metadata *md,
						unsigned int *size)
{
	NEED_INIT;
	int index = index_of(device);
	if (index < 0 || !size)
		return INVALID_ARGUMENT;
	struct reply r;
	size_t opaque;
	nvmlReturn_t code = ask_metadata(&r, "pgpu_metadata", (unsigned long long)index, 5, md,
					 size, PGPU_META_HEAD, &opaque);
	if (code)
		return code;
	md->version = md->revision = 1;
	snprintf(md->host_driver_version, sizeof md->host_driver_version, "%s", text(&r, 1));
	md->virtualization_caps = (unsigned int)num(&r, 2);
	md->range_min = (unsigned int)num(&r, 3);
	md->range_max = (unsigned int)num(&r, 4);
	md->opaque_size = (unsigned int)opaque;
	memcpy(md->opaque, text(&r, 5), opaque);
	return SUCCESS;
}

/* the opaque data's lines: "mdevfs1", then two values */
static int opaque_lines(const char *data, unsigned int size, char *a, size_t na, char *b,
			size_t nb)
{
	char copy[OPAQUE_MAX + 1];
	if (size > OPAQUE_MAX)
		return -1;
	memcpy(copy, data, size);
	copy[size] = '\0';
	char *first = strchr(copy, '\n'), *second = first ? strchr(first + 1, '\n') : NULL;
	if (strncmp(copy, "mdevfs1\n", 8) || !second)
		return -1;
	*second = '\0';
	snprintf(a, na, "%s", first + 1);
	snprintf(b, nb, "%s", second + 1);
	return 0;
}

struct compatibility { unsigned int vm, limit; };

NVML_API nvmlReturn_t nvmlGetVgpuCompatibility(struct vgpu_metadata *vgpu, struct pgpu_metadata *pgpu,
					       struct compatibility *out)
{
	if (!vgpu || !pgpu || !out)
		return INVALID_ARGUMENT;
	char type[32], migration[OPAQUE_MAX + 1], socket_path[OPAQUE_MAX + 1], bdf[32];
	if (opaque_lines(vgpu->opaque, vgpu->opaque_size, type, sizeof type, migration,
			 sizeof migration) ||
	    opaque_lines(pgpu->opaque, pgpu->opaque_size, socket_path, sizeof socket_path, bdf,
			 sizeof bdf))
		return INVALID_ARGUMENT;
	const char *argv[] = { bdf, type, migration };
	struct reply r;
	nvmlReturn_t code = ask_at(socket_path, &r, "compatibility", 3, argv);
	if (code)
		return code == DRIVER_NOT_LOADED ? UNKNOWN : code;
	out->vm = (unsigned int)num(&r, 1);
	out->limit = (unsigned int)num(&r, 2);
	return SUCCESS;
}

struct vgpu_version { unsigned int min, max; };

NVML_API nvmlReturn_t nvmlGetVgpuVersion(struct vgpu_version *supported, struct vgpu_version *current)
{
	NEED_INIT;
	if (!supported || !current)
		return INVALID_ARGUMENT;
	struct reply r;
	nvmlReturn_t code = ask(&r, "vgpu_version", 0, NULL);
	if (code)
		return code;
	supported->min = (unsigned int)num(&r, 1);
	supported->max = (unsigned int)num(&r, 2);
	current->min = (unsigned int)num(&r, 3);
	current->max = (unsigned int)num(&r, 4);
	return SUCCESS;
}

NVML_API nvmlReturn_t nvmlSetVgpuVersion(struct vgpu_version *version)
{
	NEED_INIT;
	if (!version)
		return INVALID_ARGUMENT;
	char low[16], high[16];
	snprintf(low, sizeof low, "%u", version->min);
	snprintf(high, sizeof high, "%u", version->max);
	const char *argv[] = { low, high };
	struct reply r;
	return ask(&r, "set_vgpu_version", 2, argv);
}

/* ---- events: none ever comes; a wait lasts its timeout (health checkers must not spin) ---- */

static int event_set;

NVML_API nvmlReturn_t nvmlEventSetCreate(void **set)
{
	NEED_INIT;
	if (!set)
		return INVALID_ARGUMENT;
	*set = &event_set;
	return SUCCESS;
}

NVML_API nvmlReturn_t nvmlEventSetFree(void *set)
{
	return set == &event_set ? SUCCESS : INVALID_ARGUMENT;
}

NVML_API nvmlReturn_t nvmlDeviceGetSupportedEventTypes(nvmlDevice_t device,
						       unsigned long long *types)
{
	NEED_INIT;
	if (index_of(device) < 0 || !types)
		return INVALID_ARGUMENT;
	*types = 0x1 | 0x2 | 0x8;  /* single-bit ECC, double-bit ECC, Xid critical error */
	return SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceRegisterEvents(nvmlDevice_t device, unsigned long long types,
					       void *set)
{
	(void)types;
	NEED_INIT;
	return index_of(device) < 0 || set != &event_set ? INVALID_ARGUMENT : SUCCESS;
}

NVML_API nvmlReturn_t nvmlEventSetWait_v2(void *set, void *data, unsigned int timeout_ms)
{
	(void)data;
	NEED_INIT;
	if (set != &event_set)
		return INVALID_ARGUMENT;
	struct timespec pause = { timeout_ms / 1000, (long)(timeout_ms % 1000) * 1000000L };
	while (nanosleep(&pause, &pause) < 0)
		;
	return TIMEOUT;
}

NVML_API nvmlReturn_t nvmlEventSetWait(void *set, void *data, unsigned int timeout_ms)
{
	return nvmlEventSetWait_v2(set, data, timeout_ms);
}
