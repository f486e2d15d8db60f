/*
 * floor.c - the C floor of mdevfs's benchmark: a small mdev-like tree served through
 * libfuse3's low-level API with as little work per request as a FUSE file system can do,
 * mounted beside mdevfs so that each operation has a reference in the same run.
 *
 *     floor -f MOUNTPOINT          (fusermount3 -u MOUNTPOINT stops it)
 *
 * The tree, as a sysfs type directory looks (modes as shown, owned by the floor's user):
 *
 *   migration_version    0644  "10de:1eb8-v1.0-0001\n"; a write of that version (a trailing
 *                              newline allowed) is accepted, anything else gives EINVAL
 *   available_instances  0444  MAX_DEVICES less the devices created, and "\n"
 *   create               0200  a UUID (36 characters, a trailing newline allowed) makes
 *                              devices/UUID; EINVAL for anything else, EEXIST when that
 *                              device exists, EUSERS once MAX_DEVICES exist
 *   devices/             0755  the devices made, in the order made; devices/UUID/remove
 *                              (0200) accepts "1" and keeps the device: the floor never
 *                              removes, so its tree only grows
 *   d10/ d1000/ d10000/  0755  10, 1,000 and 10,000 files e00000, e00001, ... (0444, "0\n")
 *
 * As on mdevfs: a missing name is answered ENOENT, which the kernel never caches; a file
 * opens only in the directions its mode allows (EACCES, as sysfs); O_TRUNC, and a size or
 * mode change, are accepted and ignored; the mount has default_permissions. Unlike
 * mdevfs, listings have no "." and "..", and a file stats with its text's size.
 *
 * The kernel's caching mode comes from the environment (unset: the default):
 *
 *   AT=S     attr_timeout of every reply, in seconds (default 0)
 *   ET=S     entry_timeout of every name, in seconds (default 0)
 *   DIO=0|1  open files with direct_io: every read and write reaches the floor (default 0)
 *   KEEP=0|1 open files with keep_cache: the page cache outlives a close (default 0)
 *   INVAL=0|1  after each accepted write, and after its reply, tell the kernel to drop its
 *            cache of what the write changed (fuse_lowlevel_notify_inval_inode): the file
 *            written, and for a create also available_instances and devices/ (default 0)
 *   PLUS=0|1 1: READDIRPLUS for every listing (FUSE_CAP_READDIRPLUS without
 *            FUSE_CAP_READDIRPLUS_AUTO, as pyfuse3 asks it); 0: plain READDIR (default 0)
 *   MT=0|1   1: libfuse's multi-threaded session loop; 0: one thread serves every request
 *            (default 0)
 *   STATS=F  the file that SIGUSR1 writes the request counters to (default: stderr)
 *
 * Request counters: every request the floor handles is counted by its opcode. On SIGUSR1
 * the cumulative counts are written to STATS.tmp, which is then renamed to STATS, one
 * "NAME COUNT" line per opcode and always "other COUNT" last:
 *
 *   lookup forget getattr setattr open read write release opendir readdir readdirplus
 *   releasedir statfs other
 *
 * forget counts FORGET and BATCH_FORGET requests (not inodes); other counts INIT. A
 * request the floor does not implement (FLUSH, GETXATTR, ACCESS, ...) is answered ENOSYS
 * by libfuse without reaching it, after which the kernel stops sending it, as it does on
 * mdevfs; those first ones are not counted.
 *
 * Build: gcc -O2 -Wall -Wextra floor.c $(pkg-config fuse3 --cflags --libs) -o floor
 */
#define FUSE_USE_VERSION 31
#define _GNU_SOURCE
#include <fuse_lowlevel.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#define VERSION "10de:1eb8-v1.0-0001"
#define MAX_DEVICES 1000000
#define UUID_LEN 36
/* the mount's type is fuse.mdevfs-floor: the benchmark unmounts only that */
#define MOUNT_OPTIONS "-ofsname=mdevfs-floor,subtype=mdevfs-floor,default_permissions"

/* --- the knobs ------------------------------------------------------------------------ */

static struct {
	double attr_timeout, entry_timeout;
	int direct_io, keep_cache, inval, plus, mt;
	const char *stats;
} knob;

static struct fuse_session *session; /* for the invalidations (INVAL) */

/* A 0|1 knob; unset or empty: 0. Exits on any other value. */
static int flag_knob(const char *name)
{
	const char *v = getenv(name);

	if (v == NULL || *v == '\0' || strcmp(v, "0") == 0)
		return 0;
	if (strcmp(v, "1") == 0)
		return 1;
	fprintf(stderr, "floor: %s must be 0 or 1, not %s\n", name, v);
	exit(2);
}

/* A timeout in seconds (>= 0); unset or empty: 0. Exits on anything else. */
static double seconds_knob(const char *name)
{
	const char *v = getenv(name);
	char *end;
	double s;

	if (v == NULL || *v == '\0')
		return 0;
	s = strtod(v, &end);
	if (*end != '\0' || !isfinite(s) || s < 0) {
		fprintf(stderr, "floor: %s must be seconds (a number >= 0), not %s\n", name, v);
		exit(2);
	}
	return s;
}

/* --- request counters ------------------------------------------------------------------ */

enum counter {
	C_LOOKUP, C_FORGET, C_GETATTR, C_SETATTR, C_OPEN, C_READ, C_WRITE, C_RELEASE,
	C_OPENDIR, C_READDIR, C_READDIRPLUS, C_RELEASEDIR, C_STATFS, C_OTHER, C_COUNT
};
static const char *const COUNTER_NAME[C_COUNT] = {
	"lookup", "forget", "getattr", "setattr", "open", "read", "write", "release",
	"opendir", "readdir", "readdirplus", "releasedir", "statfs", "other",
};
/* atomic: the MT loop's threads add, the counters' thread reads */
static unsigned long long counts[C_COUNT];

static void count(enum counter c)
{
	__atomic_fetch_add(&counts[c], 1, __ATOMIC_RELAXED);
}

static void write_counts(void)
{
	char tmp[PATH_MAX + 8];
	FILE *f = stderr;

	if (knob.stats != NULL) {
		snprintf(tmp, sizeof tmp, "%s.tmp", knob.stats);
		f = fopen(tmp, "w");
		if (f == NULL) {
			perror("floor: STATS");
			return;
		}
	}
	for (int c = 0; c < C_COUNT; c++)
		fprintf(f, "%s %llu\n", COUNTER_NAME[c], __atomic_load_n(&counts[c], __ATOMIC_RELAXED));
	if (f == stderr)
		return;
	/* a reader sees the whole file or none */
	if (fclose(f) != 0 || rename(tmp, knob.stats) != 0)
		perror("floor: STATS");
}

/* A thread of its own takes SIGUSR1 (blocked in every other thread) and writes the
 * counters with stdio, which a signal handler could not. */
static void *counters_thread(void *set)
{
	int sig;

	for (;;)
		if (sigwait(set, &sig) == 0)
			write_counts();
	return NULL;
}

/* --- the tree ------------------------------------------------------------------------- */
/*
 * Inode numbers say what a node is:
 *   1 .. 8                the root (1), its three files, devices/, the lists (INO_LIST + k)
 *   ENTRY_BASE(k) + i     file i of list k (below 2^32)
 *   DEV_BASE + 2j         device j's directory; DEV_BASE + 2j + 1 its remove file
 */
enum {
	INO_ROOT = FUSE_ROOT_ID, INO_MIGRATION, INO_AVAILABLE, INO_CREATE, INO_DEVICES,
	INO_LIST, /* d10, d1000, d10000: INO_LIST + 0, 1, 2 */
	LISTS = 3
};
static const long LIST_SIZE[LISTS] = {10, 1000, 10000};
#define ENTRY_BASE(k) (((fuse_ino_t)(k) + 1) << 24)
#define DEV_BASE ((fuse_ino_t)1 << 32)

static const struct {
	const char *name;
	fuse_ino_t ino;
} ROOT[] = {
	{"migration_version", INO_MIGRATION}, {"available_instances", INO_AVAILABLE},
	{"create", INO_CREATE}, {"devices", INO_DEVICES}, {"d10", INO_LIST + 0},
	{"d1000", INO_LIST + 1}, {"d10000", INO_LIST + 2},
};
#define ROOT_CHILDREN (sizeof ROOT / sizeof ROOT[0])

/* The devices, in the order made, and a hash table of their names (open addressing). */
static struct {
	char (*uuid)[UUID_LEN + 1]; /* device j is uuid[j] */
	size_t n, cap;
	size_t *slot;               /* j + 1, or 0 for a free slot */
	size_t nslots;              /* a power of two, more than twice n */
} devs;

/* Every request takes it around its look at the tree: needed only with MT=1, and all but
 * free without (never contended). */
static pthread_mutex_t tree_lock = PTHREAD_MUTEX_INITIALIZER;
static time_t started;        /* every node's times */
static uid_t uid;             /* every node's owner: the floor's user */
static gid_t gid;

static size_t hash(const char *s)
{
	size_t h = 1469598103934665603u; /* FNV-1a */

	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 1099511628211u;
	return h;
}

/* The index of device `name`, or -1. */
static long dev_find(const char *name)
{
	if (devs.nslots == 0)
		return -1;
	for (size_t i = hash(name) & (devs.nslots - 1); devs.slot[i]; i = (i + 1) & (devs.nslots - 1))
		if (strcmp(devs.uuid[devs.slot[i] - 1], name) == 0)
			return (long)devs.slot[i] - 1;
	return -1;
}

static void dev_index(size_t j)
{
	size_t i = hash(devs.uuid[j]) & (devs.nslots - 1);

	while (devs.slot[i])
		i = (i + 1) & (devs.nslots - 1);
	devs.slot[i] = j + 1;
}

/* Add device `name` (a lower-case UUID); 0 or an errno. */
static int dev_add(const char *name)
{
	if (dev_find(name) >= 0)
		return EEXIST;
	if (devs.n >= MAX_DEVICES)
		return EUSERS;
	if (devs.n == devs.cap) {
		size_t cap = devs.cap ? 2 * devs.cap : 1024;
		void *uuid = realloc(devs.uuid, cap * sizeof *devs.uuid);

		if (uuid == NULL)
			return ENOMEM;
		devs.uuid = uuid;
		devs.cap = cap;
	}
	if (2 * (devs.n + 1) >= devs.nslots) { /* grow the table and index every name again */
		size_t nslots = devs.nslots ? 2 * devs.nslots : 4096;
		size_t *slot = calloc(nslots, sizeof *slot);

		if (slot == NULL)
			return ENOMEM;
		free(devs.slot);
		devs.slot = slot;
		devs.nslots = nslots;
		for (size_t j = 0; j < devs.n; j++)
			dev_index(j);
	}
	memcpy(devs.uuid[devs.n], name, UUID_LEN + 1);
	dev_index(devs.n++);
	return 0;
}

static int is_device(fuse_ino_t ino, int remove)
{
	return ino >= DEV_BASE && (ino - DEV_BASE) / 2 < devs.n && (int)((ino - DEV_BASE) % 2) == remove;
}

/* List k's file i, when ino is one: k and i; else -1. */
static int list_entry(fuse_ino_t ino, long *i)
{
	fuse_ino_t k = (ino >> 24) - 1;

	if (ino < ENTRY_BASE(0) || ino >= DEV_BASE || k >= LISTS)
		return -1;
	*i = (long)(ino & 0xffffff);
	return *i < LIST_SIZE[k] ? (int)k : -1;
}

/* The text of a readable file into buf (64 bytes); its length. */
static size_t text_of(fuse_ino_t ino, char *buf)
{
	long i;

	if (ino == INO_MIGRATION)
		return (size_t)snprintf(buf, 64, "%s\n", VERSION);
	if (ino == INO_AVAILABLE)
		return (size_t)snprintf(buf, 64, "%zu\n", (size_t)MAX_DEVICES - devs.n);
	if (list_entry(ino, &i) >= 0)
		return (size_t)snprintf(buf, 64, "0\n");
	return 0;
}

/* The attributes of node ino; 0, or ENOENT for no such node. */
static int attr_of(fuse_ino_t ino, struct stat *st)
{
	char text[64];
	long i;

	memset(st, 0, sizeof *st);
	st->st_ino = ino;
	st->st_uid = uid;
	st->st_gid = gid;
	st->st_blksize = 4096;
	st->st_atime = st->st_mtime = st->st_ctime = started;
	st->st_nlink = 1;
	if (ino == INO_ROOT) {
		st->st_mode = S_IFDIR | 0755;
		st->st_nlink = 2 + 1 + LISTS; /* 2 + its subdirectories: devices/ and the lists */
	} else if (ino == INO_DEVICES) {
		st->st_mode = S_IFDIR | 0755;
		st->st_nlink = 2 + devs.n;
	} else if ((ino >= INO_LIST && ino < INO_LIST + LISTS) || is_device(ino, 0)) {
		st->st_mode = S_IFDIR | 0755;
		st->st_nlink = 2;
	} else if (ino == INO_CREATE || is_device(ino, 1)) {
		st->st_mode = S_IFREG | 0200;
	} else if (list_entry(ino, &i) >= 0) {
		st->st_mode = S_IFREG | 0444;
		st->st_size = 2; /* "0\n", without a printf for each of 10,000 entries */
	} else if (ino == INO_MIGRATION || ino == INO_AVAILABLE) {
		st->st_mode = S_IFREG | (ino == INO_MIGRATION ? 0644 : 0444);
		st->st_size = (off_t)text_of(ino, text);
	} else {
		return ENOENT;
	}
	return 0;
}

/* The inode of directory dir's child `name`, or 0 if it has none. */
static fuse_ino_t child(fuse_ino_t dir, const char *name)
{
	long j;
	char *end;

	if (dir == INO_ROOT) {
		for (size_t c = 0; c < ROOT_CHILDREN; c++)
			if (strcmp(ROOT[c].name, name) == 0)
				return ROOT[c].ino;
	} else if (dir == INO_DEVICES) {
		j = dev_find(name);
		return j < 0 ? 0 : DEV_BASE + 2 * (fuse_ino_t)j;
	} else if (is_device(dir, 0)) {
		return strcmp(name, "remove") == 0 ? dir + 1 : 0;
	} else if (dir >= INO_LIST && dir < INO_LIST + LISTS) {
		/* exactly "e" and five digits, below the list's size */
		if (name[0] != 'e' || strlen(name) != 6 || strspn(name + 1, "0123456789") != 5)
			return 0;
		j = strtol(name + 1, &end, 10);
		return j < LIST_SIZE[dir - INO_LIST] ? ENTRY_BASE(dir - INO_LIST) + (fuse_ino_t)j : 0;
	}
	return 0;
}

/* Directory dir's child number i (from 0): its inode, and its name in `name`; 0 past the
 * last. A device's number never changes (the list only grows), so neither do offsets. */
static fuse_ino_t nth_child(fuse_ino_t dir, size_t i, char name[NAME_MAX + 1])
{
	if (dir == INO_ROOT && i < ROOT_CHILDREN) {
		strcpy(name, ROOT[i].name);
		return ROOT[i].ino;
	}
	if (dir == INO_DEVICES && i < devs.n) {
		strcpy(name, devs.uuid[i]);
		return DEV_BASE + 2 * i;
	}
	if (is_device(dir, 0) && i == 0) {
		strcpy(name, "remove");
		return dir + 1;
	}
	if (dir >= INO_LIST && dir < INO_LIST + LISTS && i < (size_t)LIST_SIZE[dir - INO_LIST]) {
		snprintf(name, NAME_MAX + 1, "e%05zu", i);
		return ENTRY_BASE(dir - INO_LIST) + i;
	}
	return 0;
}

static int entry_of(fuse_ino_t ino, struct fuse_entry_param *e)
{
	memset(e, 0, sizeof *e);
	e->ino = ino;
	e->attr_timeout = knob.attr_timeout;
	e->entry_timeout = knob.entry_timeout;
	return attr_of(ino, &e->attr);
}

/* Whether a write of buf[0..size) is `want`, a trailing newline allowed. */
static int wrote(const char *buf, size_t size, const char *want)
{
	size_t len = strlen(want);

	return (size == len || (size == len + 1 && buf[len] == '\n')) && memcmp(buf, want, len) == 0;
}

/* A write to `create`: 0 or an errno. */
static int create_device(const char *buf, size_t size)
{
	char uuid[UUID_LEN + 1];

	if (size != UUID_LEN && !(size == UUID_LEN + 1 && buf[UUID_LEN] == '\n'))
		return EINVAL;
	for (int i = 0; i < UUID_LEN; i++) {
		char c = buf[i];

		if (i == 8 || i == 13 || i == 18 || i == 23) {
			if (c != '-')
				return EINVAL;
		} else if (c >= 'A' && c <= 'F') {
			c = (char)(c - 'A' + 'a'); /* the kernel names a device in lower case */
		} else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
			return EINVAL;
		}
		uuid[i] = c;
	}
	uuid[UUID_LEN] = '\0';
	return dev_add(uuid);
}

/* INVAL: drop the kernel's cache of ino (its pages and attributes). ENOENT: it had none. */
static void invalidate(fuse_ino_t ino)
{
	int err = fuse_lowlevel_notify_inval_inode(session, ino, 0, 0);

	if (err != 0 && err != -ENOENT)
		fprintf(stderr, "floor: invalidating inode %llu: %s\n", (unsigned long long)ino,
			strerror(-err));
}

/* --- the requests --------------------------------------------------------------------- */
/* Each looks at the tree under the lock and replies after it. */

static void fl_init(void *userdata, struct fuse_conn_info *conn)
{
	(void)userdata;
	count(C_OTHER);
	if (knob.plus && (conn->capable & FUSE_CAP_READDIRPLUS)) {
		conn->want |= FUSE_CAP_READDIRPLUS;
		conn->want &= ~FUSE_CAP_READDIRPLUS_AUTO;
	} else {
		conn->want &= ~(FUSE_CAP_READDIRPLUS | FUSE_CAP_READDIRPLUS_AUTO);
	}
}

static void fl_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fuse_entry_param e;
	fuse_ino_t ino;
	int err;

	count(C_LOOKUP);
	pthread_mutex_lock(&tree_lock);
	ino = child(parent, name);
	err = ino ? entry_of(ino, &e) : ENOENT;
	pthread_mutex_unlock(&tree_lock);
	if (err)
		fuse_reply_err(req, err);
	else
		fuse_reply_entry(req, &e);
}

static void fl_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	(void)ino, (void)nlookup; /* inodes live as long as the floor */
	count(C_FORGET);
	fuse_reply_none(req);
}

static void fl_forget_multi(fuse_req_t req, size_t n, struct fuse_forget_data *forgets)
{
	(void)n, (void)forgets;
	count(C_FORGET);
	fuse_reply_none(req);
}

static void reply_attr(fuse_req_t req, fuse_ino_t ino)
{
	struct stat st;
	int err;

	pthread_mutex_lock(&tree_lock);
	err = attr_of(ino, &st);
	pthread_mutex_unlock(&tree_lock);
	if (err)
		fuse_reply_err(req, err);
	else
		fuse_reply_attr(req, &st, knob.attr_timeout);
}

static void fl_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)fi;
	count(C_GETATTR);
	reply_attr(req, ino);
}

/* Mode, owner, times and size: accepted and ignored (so O_TRUNC and truncate work). */
static void fl_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
		       struct fuse_file_info *fi)
{
	(void)attr, (void)to_set, (void)fi;
	count(C_SETATTR);
	reply_attr(req, ino);
}

static void fl_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	int acc = fi->flags & O_ACCMODE;
	struct stat st;
	int err;

	count(C_OPEN);
	pthread_mutex_lock(&tree_lock);
	err = attr_of(ino, &st);
	pthread_mutex_unlock(&tree_lock);
	if (!err && S_ISDIR(st.st_mode))
		err = EISDIR;
	else if (!err && ((acc != O_WRONLY && !(st.st_mode & 0444)) ||
			  (acc != O_RDONLY && !(st.st_mode & 0222))))
		err = EACCES; /* sysfs: only the directions the mode allows */
	if (err) {
		fuse_reply_err(req, err);
		return;
	}
	fi->direct_io = knob.direct_io;
	fi->keep_cache = knob.keep_cache;
	fuse_reply_open(req, fi);
}

static void fl_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	char text[64];
	size_t len;

	(void)fi;
	count(C_READ);
	pthread_mutex_lock(&tree_lock);
	len = text_of(ino, text);
	pthread_mutex_unlock(&tree_lock);
	if (off < 0 || (size_t)off >= len)
		fuse_reply_buf(req, NULL, 0);
	else
		fuse_reply_buf(req, text + off, len - (size_t)off < size ? len - (size_t)off : size);
}

static void fl_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
		     struct fuse_file_info *fi)
{
	int err;

	(void)off, (void)fi; /* as sysfs: every write is the whole value */
	count(C_WRITE);
	pthread_mutex_lock(&tree_lock);
	if (ino == INO_MIGRATION)
		err = wrote(buf, size, VERSION) ? 0 : EINVAL;
	else if (ino == INO_CREATE)
		err = create_device(buf, size);
	else if (is_device(ino, 1))
		err = wrote(buf, size, "1") ? 0 : EINVAL;
	else
		err = EACCES;
	pthread_mutex_unlock(&tree_lock);
	if (err) {
		fuse_reply_err(req, err);
		return;
	}
	fuse_reply_write(req, size);
	/* after the reply: the writer no longer waits on the floor, so nothing the kernel
	 * locks for this write can hold the invalidation up */
	if (knob.inval) {
		invalidate(ino);
		if (ino == INO_CREATE) {
			invalidate(INO_AVAILABLE);
			invalidate(INO_DEVICES);
		}
	}
}

static void fl_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino, (void)fi;
	count(C_RELEASE);
	fuse_reply_err(req, 0);
}

static void fl_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct stat st;
	int err;

	count(C_OPENDIR);
	pthread_mutex_lock(&tree_lock);
	err = attr_of(ino, &st);
	pthread_mutex_unlock(&tree_lock);
	if (!err && !S_ISDIR(st.st_mode))
		err = ENOTDIR;
	if (err)
		fuse_reply_err(req, err);
	else
		fuse_reply_open(req, fi);
}

/* READDIR and READDIRPLUS: the children from number `off` on, as many as fit in `size`
 * bytes; an entry's offset is the number of the next one. */
static void list(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, int plus)
{
	char *buf = malloc(size), name[NAME_MAX + 1];
	size_t used = 0, need;
	fuse_ino_t c;

	count(plus ? C_READDIRPLUS : C_READDIR);
	if (buf == NULL) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	pthread_mutex_lock(&tree_lock);
	for (size_t i = off < 0 ? 0 : (size_t)off; (c = nth_child(ino, i, name)) != 0; i++) {
		if (plus) {
			struct fuse_entry_param e;

			entry_of(c, &e);
			need = fuse_add_direntry_plus(req, buf + used, size - used, name, &e,
						      (off_t)i + 1);
		} else {
			struct stat st;

			attr_of(c, &st);
			need = fuse_add_direntry(req, buf + used, size - used, name, &st,
						 (off_t)i + 1);
		}
		if (need > size - used)
			break; /* it did not fit, and was not added: the next call starts there */
		used += need;
	}
	pthread_mutex_unlock(&tree_lock);
	fuse_reply_buf(req, buf, used);
	free(buf);
}

static void fl_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi)
{
	(void)fi;
	list(req, ino, size, off, 0);
}

static void fl_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
			   struct fuse_file_info *fi)
{
	(void)fi;
	list(req, ino, size, off, 1);
}

static void fl_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino, (void)fi;
	count(C_RELEASEDIR);
	fuse_reply_err(req, 0);
}

static void fl_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct statvfs sv = {.f_bsize = 4096, .f_frsize = 4096, .f_namemax = NAME_MAX};

	(void)ino;
	count(C_STATFS);
	fuse_reply_statfs(req, &sv);
}

static const struct fuse_lowlevel_ops floor_ops = {
	.init = fl_init,
	.lookup = fl_lookup,
	.forget = fl_forget,
	.forget_multi = fl_forget_multi,
	.getattr = fl_getattr,
	.setattr = fl_setattr,
	.open = fl_open,
	.read = fl_read,
	.write = fl_write,
	.release = fl_release,
	.opendir = fl_opendir,
	.readdir = fl_readdir,
	.readdirplus = fl_readdirplus,
	.releasedir = fl_releasedir,
	.statfs = fl_statfs,
};

/* --- main ----------------------------------------------------------------------------- */

int main(int argc, char *argv[])
{
	struct fuse_args args = FUSE_ARGS_INIT(0, NULL);
	struct fuse_cmdline_opts opts;
	sigset_t usr1;
	pthread_t counters;
	int ret = 1;

	knob.attr_timeout = seconds_knob("AT");
	knob.entry_timeout = seconds_knob("ET");
	knob.direct_io = flag_knob("DIO");
	knob.keep_cache = flag_knob("KEEP");
	knob.inval = flag_knob("INVAL");
	knob.plus = flag_knob("PLUS");
	knob.mt = flag_knob("MT");
	knob.stats = getenv("STATS");
	if (knob.stats != NULL && *knob.stats == '\0')
		knob.stats = NULL;
	started = time(NULL);
	uid = getuid();
	gid = getgid();

	/* the command line, and the floor's own mount options */
	for (int i = 0; i < argc; i++)
		if (fuse_opt_add_arg(&args, argv[i]) != 0)
			return 1;
	if (fuse_opt_add_arg(&args, MOUNT_OPTIONS) != 0 || fuse_parse_cmdline(&args, &opts) != 0)
		return 2;
	if (opts.show_help || opts.show_version || opts.mountpoint == NULL) {
		fprintf(stderr, "usage: %s -f MOUNTPOINT  (knobs AT ET DIO KEEP INVAL PLUS MT STATS "
			"in the environment; see floor.c)\n", argv[0]);
		if (opts.show_version)
			fuse_lowlevel_version();
		ret = opts.show_help || opts.show_version ? 0 : 2;
		goto out_args;
	}

	/* SIGUSR1 goes to the counters' thread only: block it before any thread starts */
	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	if (pthread_sigmask(SIG_BLOCK, &usr1, NULL) != 0 ||
	    pthread_create(&counters, NULL, counters_thread, &usr1) != 0) {
		fprintf(stderr, "floor: cannot start the counters' thread\n");
		goto out_args;
	}
	pthread_detach(counters);

	session = fuse_session_new(&args, &floor_ops, sizeof floor_ops, NULL);
	if (session == NULL)
		goto out_args;
	if (fuse_set_signal_handlers(session) != 0)
		goto out_session;
	if (fuse_session_mount(session, opts.mountpoint) != 0)
		goto out_signals;
	fuse_daemonize(opts.foreground);

	/* until the mount goes (fusermount3 -u: the loop returns 0) or SIGINT/SIGTERM/SIGHUP
	 * (it returns the signal's number): both a clean end; -errno is a failure */
	ret = knob.mt ? fuse_session_loop_mt(session, 0) : fuse_session_loop(session);
	ret = ret < 0;

	fuse_session_unmount(session);
out_signals:
	fuse_remove_signal_handlers(session);
out_session:
	fuse_session_destroy(session);
out_args:
	free(opts.mountpoint);
	fuse_opt_free_args(&args);
	return ret;
}
