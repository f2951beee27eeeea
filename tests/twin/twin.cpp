// twin.cpp: the "twin node", a stand-in for Bitcoin Core's bitcoind in
// peerlog's integration tests.
//
// peerlog attaches to an unmodified bitcoind through its USDT tracepoints and
// through uprobes on a handful of C++ functions. No bitcoind can be installed
// where the tests run, so this program reproduces exactly what peerlog depends
// on, and nothing else:
//
//   * the USDT probes: same providers, names, argument order and C types as
//     Bitcoin Core, each guarded by a 16-bit semaphore in the `.probes`
//     section, as src/util/trace.h produces them;
//   * the probed functions, with the same C++ names and parameter types, so
//     the same mangled symbols (PeerManagerImpl lives in an anonymous
//     namespace, so its methods are LOCAL symbols, like bitcoind's);
//   * the same threads (b-net, b-msghand, b-opencon) doing the same work, so
//     "which thread / which function" questions have bitcoind's answers;
//   * the P2P v1 wire protocol on loopback, with just enough node behaviour
//     (handshake, ping, inv/getdata, tx, block, ...) that every probe fires
//     for a real reason;
//   * payloads read where net_processing.cpp reads them, with the same
//     errors: for every message type bitcoind deserializes (default
//     options), a malformed payload throws std::ios_base::failure out of
//     ProcessMessage, caught in ProcessMessages, as in bitcoind.
//
// Class, function and member names follow Bitcoin Core (src/net.cpp,
// src/net_processing.cpp, src/validation.cpp, src/txmempool.cpp) so a reader
// can go from a piece here to the piece it mirrors there. The code is our
// own and deliberately minimal: no UTXO set, no scripts, no proof-of-work
// checks.
//
// Build (tests/build.rs does this):
//   g++ -std=c++20 -O2 -g -fomit-frame-pointer -pthread twin.cpp -o twin
// Usage:
//   twin [-port=N] [-connect=IP:PORT]... [-printport] [-maxinbound=K]
//        [-twinrbf] [-blocksize=N] [-debug]

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <ios>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <span>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

// ===========================================================================
// Tracing: mirrors src/util/trace.h (ENABLE_TRACING build)
// ===========================================================================
//
// The semaphore feature is what peerlog must cope with on bitcoind >= v29:
// arguments are only prepared, and the probe's nop only reached, while the
// tracer has raised the counter. A tracer that forgets to raise it sees
// nothing, here as with the real node.

#define SDT_USE_VARIADIC 1

#ifndef TWIN_NO_SEMAPHORES
#define _SDT_HAS_SEMAPHORES 1

#define TRACEPOINT_SEMAPHORE(context, event) \
    unsigned short context##_##event##_semaphore __attribute__((section(".probes")))

#include <sys/sdt.h>

#define TRACEPOINT_ACTIVE(context, event) (context##_##event##_semaphore > 0)
#else
// Bitcoin Core v23-v28: the same probes without semaphores (the notes say
// `Semaphore: 0`); arguments are always prepared and the nop always reached.
#define TRACEPOINT_SEMAPHORE(context, event) static_assert(true)

#include <sys/sdt.h>

#define TRACEPOINT_ACTIVE(context, event) true
#endif

#define TRACEPOINT(context, event, ...)                                  \
    do {                                                                 \
        if (TRACEPOINT_ACTIVE(context, event)) {                         \
            STAP_PROBEV(context, event __VA_OPT__(, ) __VA_ARGS__);      \
        }                                                                \
    } while (0)

// src/net.cpp
TRACEPOINT_SEMAPHORE(net, closed_connection);
TRACEPOINT_SEMAPHORE(net, evicted_inbound_connection);
TRACEPOINT_SEMAPHORE(net, inbound_connection);
TRACEPOINT_SEMAPHORE(net, outbound_connection);
TRACEPOINT_SEMAPHORE(net, outbound_message);
// src/net_processing.cpp
TRACEPOINT_SEMAPHORE(net, inbound_message);
TRACEPOINT_SEMAPHORE(net, misbehaving_connection);
// src/txmempool.cpp
TRACEPOINT_SEMAPHORE(mempool, added);
TRACEPOINT_SEMAPHORE(mempool, removed);
// src/validation.cpp
TRACEPOINT_SEMAPHORE(validation, block_connected);
TRACEPOINT_SEMAPHORE(mempool, replaced);
TRACEPOINT_SEMAPHORE(mempool, rejected);

// The functions peerlog puts uprobes on must exist as real, uncloned
// functions under their own names: no inlining into callers, and no
// .isra/.constprop clones that callers would use instead of the symbol.
#define TWIN_PROBED __attribute__((noinline, noclone))

// ===========================================================================
// Logging, time, randomness (src/logging.h, src/util/time.h, src/random.h)
// ===========================================================================

static bool g_debug = false;

__attribute__((format(printf, 1, 2))) static void LogPrintStr(const char* fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    std::vfprintf(stderr, fmt, ap);
    va_end(ap);
}

// Only evaluates its arguments under -debug, like bitcoind's LogDebug.
#define LogDebug(...)                                 \
    do {                                              \
        if (g_debug) LogPrintStr("twin: " __VA_ARGS__); \
    } while (0)

template <typename Dur, typename Src>
constexpr auto Ticks(Src d)
{
    return std::chrono::duration_cast<Dur>(d).count();
}

static std::chrono::microseconds GetTimeMicros()
{
    return std::chrono::duration_cast<std::chrono::microseconds>(
        std::chrono::system_clock::now().time_since_epoch());
}

static std::chrono::seconds GetTimeSeconds()
{
    return std::chrono::duration_cast<std::chrono::seconds>(GetTimeMicros());
}

static uint64_t GetRand64()
{
    thread_local std::mt19937_64 rng{(uint64_t{std::random_device{}()} << 32) ^ std::random_device{}()};
    return rng();
}

static std::string SanitizeString(const std::string& s)
{
    std::string out;
    for (char c : s) out += (c >= 0x20 && c < 0x7f) ? c : '?';
    return out;
}

// ===========================================================================
// SHA-256 (FIPS 180-4). Needed for message checksums, txids and block hashes;
// written here so the twin has no library dependencies.
// ===========================================================================

using uint256 = std::array<unsigned char, 32>; // internal (little-endian) byte order

static inline uint32_t ReadBE32(const unsigned char* p)
{
    return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}
static inline void WriteBE32(unsigned char* p, uint32_t x)
{
    p[0] = x >> 24; p[1] = x >> 16; p[2] = x >> 8; p[3] = x;
}
static inline uint32_t ReadLE32(const unsigned char* p)
{
    return uint32_t{p[0]} | (uint32_t{p[1]} << 8) | (uint32_t{p[2]} << 16) | (uint32_t{p[3]} << 24);
}
static inline void WriteLE32(unsigned char* p, uint32_t x)
{
    p[0] = x; p[1] = x >> 8; p[2] = x >> 16; p[3] = x >> 24;
}

namespace sha256 {
constexpr uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};
constexpr uint32_t INIT[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                              0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};

static inline uint32_t Rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

// One compression of a 64-byte chunk into the state.
static void Transform(uint32_t s[8], const unsigned char* chunk)
{
    uint32_t w[64];
    for (int i = 0; i < 16; ++i) w[i] = ReadBE32(chunk + 4 * i);
    for (int i = 16; i < 64; ++i) {
        const uint32_t s0 = Rotr(w[i - 15], 7) ^ Rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
        const uint32_t s1 = Rotr(w[i - 2], 17) ^ Rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = s[0], b = s[1], c = s[2], d = s[3], e = s[4], f = s[5], g = s[6], h = s[7];
    for (int i = 0; i < 64; ++i) {
        const uint32_t t1 = h + (Rotr(e, 6) ^ Rotr(e, 11) ^ Rotr(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
        const uint32_t t2 = (Rotr(a, 2) ^ Rotr(a, 13) ^ Rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        h = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
    }
    s[0] += a; s[1] += b; s[2] += c; s[3] += d; s[4] += e; s[5] += f; s[6] += g; s[7] += h;
}
} // namespace sha256

class CSHA256
{
public:
    CSHA256() { std::copy(std::begin(sha256::INIT), std::end(sha256::INIT), m_s); }

    CSHA256& Write(const unsigned char* data, size_t len)
    {
        size_t bufsize = m_bytes % 64;
        m_bytes += len;
        if (bufsize > 0) {
            const size_t take = std::min(len, 64 - bufsize);
            std::memcpy(m_buf + bufsize, data, take);
            data += take; len -= take; bufsize += take;
            if (bufsize < 64) return *this;
            sha256::Transform(m_s, m_buf);
        }
        for (; len >= 64; data += 64, len -= 64) sha256::Transform(m_s, data);
        if (len > 0) std::memcpy(m_buf, data, len);
        return *this;
    }

    void Finalize(unsigned char out[32])
    {
        const uint64_t bits = m_bytes * 8;
        unsigned char pad[72] = {0x80};
        const size_t padlen = 1 + ((119 - (m_bytes % 64)) % 64); // ends 8 bytes short of a chunk boundary
        for (int i = 0; i < 8; ++i) pad[padlen + i] = bits >> (56 - 8 * i);
        Write(pad, padlen + 8);
        for (int i = 0; i < 8; ++i) WriteBE32(out + 4 * i, m_s[i]);
    }

private:
    uint32_t m_s[8];
    unsigned char m_buf[64];
    uint64_t m_bytes = 0;
};

// Bitcoin's "Hash": SHA256(SHA256(x)), used for checksums, txids, block hashes.
static uint256 Hash(std::span<const unsigned char> data)
{
    uint256 once, twice;
    CSHA256().Write(data.data(), data.size()).Finalize(once.data());
    CSHA256().Write(once.data(), once.size()).Finalize(twice.data());
    return twice;
}

static uint256 Hash(const uint256& a, const uint256& b)
{
    unsigned char both[64];
    std::memcpy(both, a.data(), 32);
    std::memcpy(both + 32, b.data(), 32);
    return Hash(std::span<const unsigned char>{both, 64});
}

// Display form: the 32 bytes reversed, as bitcoind's uint256::GetHex().
static std::string GetHex(const uint256& h)
{
    static const char* digits = "0123456789abcdef";
    std::string s;
    for (int i = 31; i >= 0; --i) {
        s += digits[h[i] >> 4];
        s += digits[h[i] & 15];
    }
    return s;
}

static uint256 Uint256FromHex(const char* hex)
{
    uint256 h{};
    for (int i = 0; i < 32; ++i) {
        unsigned v = 0;
        std::sscanf(hex + 2 * i, "%2x", &v);
        h[31 - i] = v;
    }
    return h;
}

// ===========================================================================
// Serialization (src/serialize.h, src/streams.h)
// ===========================================================================

using Bytes = std::vector<unsigned char>;

static constexpr uint64_t MAX_SIZE = 0x02000000; // serialize.h: largest vector/string length accepted

static void SerU8(Bytes& v, uint8_t x) { v.push_back(x); }
static void SerLE16(Bytes& v, uint16_t x) { v.push_back(x); v.push_back(x >> 8); }
static void SerLE32(Bytes& v, uint32_t x) { for (int i = 0; i < 4; ++i) v.push_back(x >> (8 * i)); }
static void SerLE64(Bytes& v, uint64_t x) { for (int i = 0; i < 8; ++i) v.push_back(x >> (8 * i)); }
static void SerBE16(Bytes& v, uint16_t x) { v.push_back(x >> 8); v.push_back(x); }
static void SerBytes(Bytes& v, std::span<const unsigned char> b) { v.insert(v.end(), b.begin(), b.end()); }
static void SerCompactSize(Bytes& v, uint64_t n)
{
    if (n < 253) {
        SerU8(v, n);
    } else if (n <= 0xffff) {
        SerU8(v, 253); SerLE16(v, n);
    } else if (n <= 0xffffffff) {
        SerU8(v, 254); SerLE32(v, n);
    } else {
        SerU8(v, 255); SerLE64(v, n);
    }
}
static size_t CompactSizeLen(uint64_t n) { return n < 253 ? 1 : n <= 0xffff ? 3 : n <= 0xffffffff ? 5 : 9; }
static void SerString(Bytes& v, const std::string& s)
{
    SerCompactSize(v, s.size());
    v.insert(v.end(), s.begin(), s.end());
}

// A received payload plus a read cursor. Reading past the end throws
// std::ios_base::failure, as bitcoind's DataStream does. As in bitcoind, no
// message handler catches it: it leaves ProcessMessage and is caught in
// ProcessMessages, so a malformed payload unwinds through ProcessMessage's
// frame (which a tracer's return probe must survive).
class DataStream
{
public:
    DataStream() = default;
    explicit DataStream(Bytes v) : vch(std::move(v)) {}

    size_t size() const { return vch.size() - m_read_pos; }
    bool empty() const { return size() == 0; }
    const unsigned char* data() const { return vch.data() + m_read_pos; }

    std::span<const unsigned char> Read(size_t n)
    {
        if (n > size()) throw std::ios_base::failure("DataStream::read(): end of data");
        std::span<const unsigned char> r{vch.data() + m_read_pos, n};
        m_read_pos += n;
        return r;
    }
    void ignore(size_t n) { Read(n); }
    uint8_t ReadU8() { return Read(1)[0]; }
    bool ReadBool() { return ReadU8() != 0; }
    uint16_t ReadBE16() { auto b = Read(2); return (uint16_t(b[0]) << 8) | b[1]; }
    uint32_t ReadLE32() { return ::ReadLE32(Read(4).data()); }
    uint64_t ReadLE64()
    {
        auto b = Read(8);
        return uint64_t{::ReadLE32(b.data())} | (uint64_t{::ReadLE32(b.data() + 4)} << 32);
    }
    uint256 ReadHash()
    {
        uint256 h;
        auto b = Read(32);
        std::copy(b.begin(), b.end(), h.begin());
        return h;
    }
    // serialize.h ReadCompactSize: canonical encodings only, bounded by MAX_SIZE.
    uint64_t ReadCompactSize(bool range_check = true)
    {
        const uint8_t first = ReadU8();
        uint64_t n = first;
        if (first == 253) {
            const auto b = Read(2);
            n = b[0] | (uint64_t{b[1]} << 8);
            if (n < 253) throw std::ios_base::failure("non-canonical ReadCompactSize()");
        } else if (first == 254) {
            n = ReadLE32();
            if (n < 0x10000u) throw std::ios_base::failure("non-canonical ReadCompactSize()");
        } else if (first == 255) {
            n = ReadLE64();
            if (n < 0x100000000ULL) throw std::ios_base::failure("non-canonical ReadCompactSize()");
        }
        if (range_check && n > MAX_SIZE) throw std::ios_base::failure("ReadCompactSize(): size too large");
        return n;
    }
    std::string ReadString(size_t max_len)
    {
        const uint64_t n = ReadCompactSize();
        if (n > max_len) throw std::ios_base::failure("String length limit exceeded");
        auto b = Read(n);
        return std::string(b.begin(), b.end());
    }

private:
    Bytes vch;
    size_t m_read_pos = 0;
};

// ===========================================================================
// Protocol constants (src/protocol.h, src/node/protocol_version.h, src/net.h)
// ===========================================================================

using MessageStartChars = std::array<unsigned char, 4>;
static constexpr MessageStartChars REGTEST_MESSAGE_START{0xfa, 0xbf, 0xb5, 0xda};
static constexpr uint16_t REGTEST_DEFAULT_PORT = 18444;

static constexpr int PROTOCOL_VERSION = 70016;
static constexpr int INIT_PROTO_VERSION = 209;
static constexpr int MIN_PEER_PROTO_VERSION = 31800;
static constexpr int BIP0031_VERSION = 60000;
static constexpr int FEEFILTER_VERSION = 70013;
static constexpr int SHORT_IDS_BLOCKS_VERSION = 70014;
static constexpr int WTXID_RELAY_VERSION = 70016;

static constexpr unsigned int MAX_PROTOCOL_MESSAGE_LENGTH = 4 * 1000 * 1000;
static constexpr size_t DEFAULT_MAXRECEIVEBUFFER = 5 * 1000 * 1000; // -maxreceivebuffer default, bytes
static constexpr size_t DEFAULT_MAXSENDBUFFER = 1 * 1000 * 1000;    // -maxsendbuffer default, bytes
static constexpr int DEFAULT_MAX_INBOUND = 125;                     // 125 = -maxconnections default

static constexpr size_t MAX_INV_SZ = 50000;
static constexpr size_t MAX_GETDATA_SZ = 1000;
static constexpr size_t MAX_ADDR_TO_SEND = 1000;
static constexpr size_t MAX_HEADERS_RESULTS = 2000;
static constexpr size_t MAX_LOCATOR_SZ = 101;
static constexpr size_t MAX_ADDRV2_SIZE = 512;  // netaddress.h: longest BIP155 address accepted
static constexpr size_t SHORTTXIDS_LENGTH = 6;  // blockencodings.h
static constexpr int MAX_BLOCKS_TO_ANNOUNCE_GETBLOCKS = 500;  // the nLimit of bitcoind's getblocks handler
static constexpr size_t MAX_SUBVERSION_LENGTH = 256;
static constexpr uint64_t CMPCTBLOCKS_VERSION = 2;
static constexpr auto PING_INTERVAL = std::chrono::minutes{2};

using CAmount = int64_t;
static constexpr CAmount COIN = 100000000;
static constexpr CAmount MAX_MONEY = 21000000 * COIN;
static constexpr CAmount DEFAULT_MIN_RELAY_TX_FEE = 1000; // sat/kvB, what we announce in feefilter
static bool MoneyRange(CAmount v) { return v >= 0 && v <= MAX_MONEY; }

enum ServiceFlags : uint64_t {
    NODE_NONE = 0,
    NODE_NETWORK = (1 << 0),
    NODE_WITNESS = (1 << 3),
};

static const std::string USER_AGENT = "/peerlog-twin:0.1/";

namespace NetMsgType {
inline constexpr const char* VERSION = "version";
inline constexpr const char* VERACK = "verack";
inline constexpr const char* ADDR = "addr";
inline constexpr const char* ADDRV2 = "addrv2";
inline constexpr const char* SENDADDRV2 = "sendaddrv2";
inline constexpr const char* INV = "inv";
inline constexpr const char* GETDATA = "getdata";
inline constexpr const char* GETBLOCKS = "getblocks";
inline constexpr const char* GETHEADERS = "getheaders";
inline constexpr const char* TX = "tx";
inline constexpr const char* HEADERS = "headers";
inline constexpr const char* BLOCK = "block";
inline constexpr const char* GETADDR = "getaddr";
inline constexpr const char* MEMPOOL = "mempool";
inline constexpr const char* PING = "ping";
inline constexpr const char* PONG = "pong";
inline constexpr const char* NOTFOUND = "notfound";
inline constexpr const char* SENDHEADERS = "sendheaders";
inline constexpr const char* FEEFILTER = "feefilter";
inline constexpr const char* SENDCMPCT = "sendcmpct";
inline constexpr const char* WTXIDRELAY = "wtxidrelay";
inline constexpr const char* SENDTXRCNCL = "sendtxrcncl";
inline constexpr const char* CMPCTBLOCK = "cmpctblock";
inline constexpr const char* GETBLOCKTXN = "getblocktxn";
inline constexpr const char* BLOCKTXN = "blocktxn";
inline constexpr const char* GETCFILTERS = "getcfilters";
inline constexpr const char* GETCFHEADERS = "getcfheaders";
inline constexpr const char* GETCFCHECKPT = "getcfcheckpt";
// Twin-only: burn CPU inside ProcessMessage, for per-peer CPU profiling tests.
inline constexpr const char* TWINBURN = "twinburn";
} // namespace NetMsgType

enum GetDataMsg : uint32_t {
    MSG_TX = 1,
    MSG_BLOCK = 2,
    MSG_WTX = 5,
    MSG_WITNESS_FLAG = 1u << 30,
    MSG_WITNESS_BLOCK = MSG_BLOCK | MSG_WITNESS_FLAG,
    MSG_WITNESS_TX = MSG_TX | MSG_WITNESS_FLAG,
};

struct CInv {
    uint32_t type;
    uint256 hash;
    bool IsMsgTx() const { return type == MSG_TX; }
    bool IsMsgWtx() const { return type == MSG_WTX; }
    bool IsMsgBlk() const { return type == MSG_BLOCK; }
    bool IsGenTxMsg() const { return type == MSG_TX || type == MSG_WTX || type == MSG_WITNESS_TX; }
    bool IsGenBlkMsg() const { return type == MSG_BLOCK || type == MSG_WITNESS_BLOCK; }
};

static std::vector<CInv> ReadInvVector(DataStream& s)
{
    const uint64_t n = s.ReadCompactSize();
    std::vector<CInv> v;
    v.reserve(std::min<uint64_t>(n, s.size() / 36));
    for (uint64_t i = 0; i < n; ++i) {
        CInv inv;
        inv.type = s.ReadLE32();
        inv.hash = s.ReadHash();
        v.push_back(inv);
    }
    return v;
}

static Bytes SerInvVector(std::span<const CInv> v)
{
    Bytes b;
    SerCompactSize(b, v.size());
    for (const CInv& inv : v) {
        SerLE32(b, inv.type);
        SerBytes(b, inv.hash);
    }
    return b;
}

// CBlockLocator (primitives/block.h): a version field nobody reads, then
// the hashes.
static std::vector<uint256> ReadLocator(DataStream& s)
{
    s.ignore(4);
    const uint64_t n = s.ReadCompactSize();
    std::vector<uint256> v;
    v.reserve(std::min<uint64_t>(n, s.size() / 32));
    for (uint64_t i = 0; i < n; ++i) v.push_back(s.ReadHash());
    return v;
}

// BlockTransactionsRequest::indexes (blockencodings.h DifferenceFormatter):
// each CompactSize is the gap to the previous index, and every index must
// fit the uint16_t it is stored in.
static std::vector<uint16_t> ReadDifferentialIndexes(DataStream& s)
{
    const uint64_t n = s.ReadCompactSize();
    std::vector<uint16_t> v;
    v.reserve(std::min<uint64_t>(n, s.size()));
    uint64_t shift = 0;
    for (uint64_t i = 0; i < n; ++i) {
        const uint64_t gap = s.ReadCompactSize();
        shift += gap;
        if (shift < gap || shift > 0xffff) throw std::ios_base::failure("differential value overflow");
        v.push_back(uint16_t(shift++));
    }
    return v;
}

// CNetAddr::UnserializeV2Stream (netaddress.h): a BIP155 network id, then a
// length-prefixed address whose length must match a known network's; an
// unknown network's address is skipped.
static void IgnoreAddrV2(DataStream& s)
{
    const uint8_t bip155_net = s.ReadU8();
    const uint64_t address_size = s.ReadCompactSize();
    if (address_size > MAX_ADDRV2_SIZE) throw std::ios_base::failure("Address too long");
    static constexpr std::pair<uint8_t, size_t> KNOWN_SIZES[] = {
        {1, 4}, {2, 16}, {4, 32}, {5, 32}, {6, 16}, // IPv4, IPv6, TORv3, I2P, CJDNS
    };
    for (const auto& [net, size] : KNOWN_SIZES) {
        if (net == bip155_net && size != address_size) throw std::ios_base::failure("BIP155 address with wrong length");
    }
    s.ignore(address_size);
}

// ===========================================================================
// Transactions and blocks (src/primitives/transaction.h, block.h)
// ===========================================================================
//
// We keep the parsed fields the twin's rules look at and both serializations
// (with and without witness), because getdata MSG_TX asks for the stripped
// form and MSG_WTX / MSG_WITNESS_TX for the full one, as in bitcoind.

struct COutPoint {
    uint256 hash;
    uint32_t n;
    auto operator<=>(const COutPoint&) const = default;
    bool IsNull() const { return n == 0xffffffff && hash == uint256{}; }
};

class CTransaction
{
public:
    std::vector<COutPoint> vin;    // prevouts only: the twin has no scripts
    std::vector<CAmount> vout;     // values only
    bool has_witness = false;
    Bytes ser_with_witness;        // equals ser_no_witness when !has_witness
    Bytes ser_no_witness;
    uint256 txid;
    uint256 wtxid;

    int64_t GetWeight() const { return int64_t(ser_no_witness.size()) * 3 + int64_t(ser_with_witness.size()); }
    int32_t GetVirtualSize() const { return int32_t((GetWeight() + 3) / 4); }
};
using CTransactionRef = std::shared_ptr<const CTransaction>;

// UnserializeTransaction() from primitives/transaction.h, byte for byte the
// same decisions (the empty-vin "dummy" that turns into the segwit flag), with
// one leniency: a segwit-flagged transaction with no inputs and hence no
// witnesses is accepted. Bitcoin Core refuses it ("Superfluous witness
// record"), but that encoding is the only one in which common libraries
// (rust-bitcoin among them) can express a transaction without inputs, and the
// twin wants to answer those with mempool:rejected "bad-txns-vin-empty".
static CTransactionRef DeserializeTransaction(DataStream& s)
{
    auto tx = std::make_shared<CTransaction>();
    const unsigned char* const begin = s.data();

    auto read_vin = [&] {
        const uint64_t n = s.ReadCompactSize();
        tx->vin.clear();
        tx->vin.reserve(std::min<uint64_t>(n, s.size() / 41));
        for (uint64_t i = 0; i < n; ++i) {
            COutPoint prevout;
            prevout.hash = s.ReadHash();
            prevout.n = s.ReadLE32();
            s.ignore(s.ReadCompactSize()); // scriptSig
            s.ignore(4);                   // nSequence
            tx->vin.push_back(prevout);
        }
    };
    auto read_vout = [&] {
        const uint64_t n = s.ReadCompactSize();
        tx->vout.reserve(std::min<uint64_t>(n, s.size() / 9));
        for (uint64_t i = 0; i < n; ++i) {
            tx->vout.push_back(CAmount(s.ReadLE64()));
            s.ignore(s.ReadCompactSize()); // scriptPubKey
        }
    };

    s.ignore(4); // version
    const unsigned char* body_begin = s.data(); // start of the part shared by both serializations
    uint8_t flags = 0;
    read_vin();
    if (tx->vin.empty()) {
        // An empty vin is either a real one or the segwit marker; the next byte tells.
        flags = s.ReadU8();
        if (flags != 0) {
            body_begin = s.data();
            read_vin();
            read_vout();
        }
    } else {
        read_vout();
    }
    const unsigned char* const body_end = s.data();
    if (flags & 1) {
        flags ^= 1;
        for (size_t i = 0; i < tx->vin.size(); ++i) {
            const uint64_t items = s.ReadCompactSize();
            for (uint64_t j = 0; j < items; ++j) s.ignore(s.ReadCompactSize());
            if (items > 0) tx->has_witness = true;
        }
        if (!tx->has_witness && !tx->vin.empty()) throw std::ios_base::failure("Superfluous witness record");
    }
    if (flags) throw std::ios_base::failure("Unknown transaction optional data");
    s.ignore(4); // nLockTime
    const unsigned char* const end = s.data();

    if (body_begin == begin + 4) {
        tx->ser_no_witness.assign(begin, end);
    } else {
        tx->ser_no_witness.assign(begin, begin + 4);
        tx->ser_no_witness.insert(tx->ser_no_witness.end(), body_begin, body_end);
        tx->ser_no_witness.insert(tx->ser_no_witness.end(), end - 4, end);
    }
    tx->txid = Hash(tx->ser_no_witness);
    if (tx->has_witness) {
        tx->ser_with_witness.assign(begin, end);
        tx->wtxid = Hash(tx->ser_with_witness);
    } else {
        tx->ser_with_witness = tx->ser_no_witness;
        tx->wtxid = tx->txid;
    }
    return tx;
}

class CBlock
{
public:
    std::array<unsigned char, 80> header;
    uint256 hash;
    std::vector<CTransactionRef> vtx;
    Bytes ser_with_witness;
    Bytes ser_no_witness; // empty when no transaction has a witness: then identical

    uint256 GetPrevHash() const
    {
        uint256 h;
        std::copy(header.begin() + 4, header.begin() + 36, h.begin());
        return h;
    }
    const Bytes& Serialized(bool with_witness) const
    {
        return (with_witness || ser_no_witness.empty()) ? ser_with_witness : ser_no_witness;
    }
};

static std::shared_ptr<const CBlock> DeserializeBlock(DataStream& s)
{
    auto block = std::make_shared<CBlock>();
    const unsigned char* const begin = s.data();
    auto hdr = s.Read(80);
    std::copy(hdr.begin(), hdr.end(), block->header.begin());
    block->hash = Hash(hdr);
    const uint64_t n = s.ReadCompactSize();
    bool any_witness = false;
    for (uint64_t i = 0; i < n; ++i) {
        block->vtx.push_back(DeserializeTransaction(s));
        any_witness |= block->vtx.back()->has_witness;
    }
    block->ser_with_witness.assign(begin, s.data());
    if (any_witness) {
        Bytes& b = block->ser_no_witness;
        SerBytes(b, block->header);
        SerCompactSize(b, n);
        for (const auto& tx : block->vtx) SerBytes(b, tx->ser_no_witness);
    }
    return block;
}

// ===========================================================================
// Validation: CValidationInterface, CTxMemPool, ChainstateManager
// (src/validationinterface.h, src/txmempool.cpp, src/validation.cpp)
// ===========================================================================

class CValidationInterface
{
public:
    virtual ~CValidationInterface() = default;
    virtual void TransactionAddedToMempool(const CTransactionRef&) {}
    virtual void BlockConnected(const std::shared_ptr<const CBlock>&, int /*height*/) {}
};

enum class MemPoolRemovalReason { EXPIRY, SIZELIMIT, REORG, BLOCK, CONFLICT, REPLACED };

static std::string RemovalReasonToString(MemPoolRemovalReason r)
{
    switch (r) {
    case MemPoolRemovalReason::EXPIRY: return "expiry";
    case MemPoolRemovalReason::SIZELIMIT: return "sizelimit";
    case MemPoolRemovalReason::REORG: return "reorg";
    case MemPoolRemovalReason::BLOCK: return "block";
    case MemPoolRemovalReason::CONFLICT: return "conflict";
    case MemPoolRemovalReason::REPLACED: return "replaced";
    }
    return "unknown";
}

class CTxMemPoolEntry
{
public:
    CTransactionRef tx;
    int32_t nTxSize; // vsize, as GetTxSize() returns
    CAmount nFee;
    std::chrono::seconds nTime;

    const CTransaction& GetTx() const { return *tx; }
    int32_t GetTxSize() const { return nTxSize; }
    CAmount GetFee() const { return nFee; }
    std::chrono::seconds GetTime() const { return nTime; }
};

class CTxMemPool
{
public:
    explicit CTxMemPool(bool full_rbf) : m_full_rbf(full_rbf) {}

    mutable std::mutex cs;
    CValidationInterface* m_signals = nullptr;
    const bool m_full_rbf; // -twinrbf: conflicting spends replace (fires mempool:replaced)

    bool exists(const uint256& hash, bool by_wtxid) const
    {
        std::lock_guard lock(cs);
        return by_wtxid ? m_wtxid_index.count(hash) > 0 : mapTx.count(hash) > 0;
    }
    CTransactionRef get(const uint256& hash, bool by_wtxid) const
    {
        std::lock_guard lock(cs);
        auto txid = hash;
        if (by_wtxid) {
            auto w = m_wtxid_index.find(hash);
            if (w == m_wtxid_index.end()) return nullptr;
            txid = w->second;
        }
        auto it = mapTx.find(txid);
        return it == mapTx.end() ? nullptr : it->second.tx;
    }

    void addUnchecked(const CTxMemPoolEntry& entry)
    {
        mapTx.emplace(entry.GetTx().txid, entry);
        m_wtxid_index.emplace(entry.GetTx().wtxid, entry.GetTx().txid);
        for (const COutPoint& prevout : entry.GetTx().vin) mapNextTx[prevout] = entry.GetTx().txid;

        TRACEPOINT(mempool, added,
            entry.GetTx().txid.data(),
            entry.GetTxSize(),
            entry.GetFee()
        );
    }

    void removeUnchecked(const uint256& txid, MemPoolRemovalReason reason)
    {
        auto it = mapTx.find(txid);
        if (it == mapTx.end()) return;
        const CTxMemPoolEntry& e = it->second;
        TRACEPOINT(mempool, removed,
            e.GetTx().txid.data(),
            RemovalReasonToString(reason).c_str(),
            e.GetTxSize(),
            e.GetFee(),
            std::chrono::duration_cast<std::chrono::duration<std::uint64_t>>(e.GetTime()).count()
        );
        for (const COutPoint& prevout : e.GetTx().vin) {
            auto n = mapNextTx.find(prevout);
            if (n != mapNextTx.end() && n->second == txid) mapNextTx.erase(n);
        }
        m_wtxid_index.erase(e.GetTx().wtxid);
        mapTx.erase(it);
    }

    // Transactions confirmed by a newly connected block leave the mempool.
    void removeForBlock(const std::vector<CTransactionRef>& vtx)
    {
        std::lock_guard lock(cs);
        for (const auto& tx : vtx) removeUnchecked(tx->txid, MemPoolRemovalReason::BLOCK);
    }

    std::map<uint256, CTxMemPoolEntry> mapTx;
    std::map<uint256, uint256> m_wtxid_index;
    std::map<COutPoint, uint256> mapNextTx;
};

// The twin's whole fee model: deterministic, so tests can predict the fee
// reported by mempool:added.
static CAmount TwinFee(const CTransaction& tx) { return 1000 * CAmount(tx.vout.size()); }

// CheckTransaction() from consensus/tx_check.cpp, restricted to the rules
// that need no context.
static std::optional<std::string> CheckTransaction(const CTransaction& tx)
{
    if (tx.vin.empty()) return "bad-txns-vin-empty";
    if (tx.vout.empty()) return "bad-txns-vout-empty";
    CAmount total = 0;
    for (CAmount v : tx.vout) {
        if (v < 0) return "bad-txns-vout-negative";
        if (v > MAX_MONEY) return "bad-txns-vout-toolarge";
        total += v;
        if (total > MAX_MONEY) return "bad-txns-txouttotal-toolarge";
    }
    return std::nullopt;
}

// AcceptToMemoryPool(): PreChecks, optional replacement, then add. Fires
// mempool:rejected on failure (validation.cpp), mempool:replaced /
// mempool:removed / mempool:added on the way in.
static bool AcceptToMemoryPool(CTxMemPool& pool, const CTransactionRef& ptx)
{
    const CTransaction& tx = *ptx;
    std::optional<std::string> reject;
    std::set<uint256> conflicts;
    {
        std::lock_guard lock(pool.cs);
        reject = CheckTransaction(tx);
        if (!reject && pool.m_wtxid_index.count(tx.wtxid)) reject = "txn-already-in-mempool";
        if (!reject && pool.mapTx.count(tx.txid)) reject = "txn-same-nonwitness-data-in-mempool";
        const CAmount fee = TwinFee(tx);
        if (!reject && pool.m_full_rbf) {
            CAmount conflicting_fees = 0;
            for (const COutPoint& prevout : tx.vin) {
                auto it = pool.mapNextTx.find(prevout);
                if (it != pool.mapNextTx.end() && conflicts.insert(it->second).second) {
                    conflicting_fees += pool.mapTx.at(it->second).GetFee();
                }
            }
            if (!conflicts.empty() && fee <= conflicting_fees) reject = "insufficient fee";
        }
        if (!reject) {
            const CTxMemPoolEntry entry{ptx, tx.GetVirtualSize(), fee, GetTimeSeconds()};
            // Finalize(): one mempool:replaced per evicted transaction, then
            // the changeset is applied (removals, then the addition).
            for (const uint256& old_txid : conflicts) {
                const CTxMemPoolEntry& old = pool.mapTx.at(old_txid);
                const bool replaced_with_tx = true;
                TRACEPOINT(mempool, replaced,
                    old.GetTx().txid.data(),
                    old.GetTxSize(),
                    old.GetFee(),
                    std::chrono::duration_cast<std::chrono::duration<std::uint64_t>>(old.GetTime()).count(),
                    tx.txid.data(),
                    entry.GetTxSize(),
                    entry.GetFee(),
                    replaced_with_tx
                );
            }
            for (const uint256& old_txid : conflicts) pool.removeUnchecked(old_txid, MemPoolRemovalReason::REPLACED);
            pool.addUnchecked(entry);
        }
    }
    if (reject) {
        LogDebug("tx %s rejected: %s\n", GetHex(tx.txid).c_str(), reject->c_str());
        TRACEPOINT(mempool, rejected,
            tx.txid.data(),
            reject->c_str()
        );
        return false;
    }
    if (pool.m_signals) pool.m_signals->TransactionAddedToMempool(ptx);
    return true;
}

// Blocks the twin knows. The two built-in blocks are stored but not part of
// the active chain (which starts at the regtest genesis, height 0); every new
// block received from a peer is connected on top of the tip. No proof-of-work
// or script checks: the twin only has to fire validation:block_connected for
// a real reason.
class ChainstateManager
{
public:
    explicit ChainstateManager(CTxMemPool& mempool) : m_mempool(mempool) {}

    CValidationInterface* m_signals = nullptr;

    void AddStoredBlock(const std::shared_ptr<const CBlock>& block)
    {
        std::lock_guard lock(cs_main);
        if (m_block_index.emplace(block->hash, block).second) m_block_list.push_back(block);
    }

    bool HaveBlock(const uint256& hash) const
    {
        std::lock_guard lock(cs_main);
        return m_block_index.count(hash) > 0;
    }

    std::shared_ptr<const CBlock> LookupBlock(const uint256& hash) const
    {
        std::lock_guard lock(cs_main);
        auto it = m_block_index.find(hash);
        return it == m_block_index.end() ? nullptr : it->second;
    }

    int Height() const
    {
        std::lock_guard lock(cs_main);
        return m_tip_height;
    }

    // ProcessNewBlock() → ConnectTip() → ConnectBlock(). Returns false for
    // a block we already have.
    bool ProcessNewBlock(const std::shared_ptr<const CBlock>& block)
    {
        int height;
        {
            std::lock_guard lock(cs_main);
            if (m_block_index.count(block->hash)) return false;
            const auto time_start = std::chrono::steady_clock::now();
            int nInputs = 0;
            for (const auto& tx : block->vtx) nInputs += tx->vin.size();
            const int64_t nSigOpsCost = 0; // no scripts in the twin
            m_block_index.emplace(block->hash, block);
            m_block_list.push_back(block);
            height = ++m_tip_height;
            const auto time_5 = std::chrono::steady_clock::now();
            const uint256& block_hash = block->hash;

            TRACEPOINT(validation, block_connected,
                block_hash.data(),
                height,
                block->vtx.size(),
                nInputs,
                nSigOpsCost,
                Ticks<std::chrono::nanoseconds>(time_5 - time_start)
            );
        }
        LogDebug("UpdateTip: new best=%s height=%d tx=%zu\n", GetHex(block->hash).c_str(), height, block->vtx.size());
        m_mempool.removeForBlock(block->vtx);
        if (m_signals) m_signals->BlockConnected(block, height);
        return true;
    }

    // The blocks after the first locator entry we know (all of them if we
    // know none), up to and including hash_stop, at most MAX_HEADERS_RESULTS.
    std::vector<std::shared_ptr<const CBlock>> BlocksAfterLocator(const std::vector<uint256>& locator,
                                                                  const uint256& hash_stop) const
    {
        std::lock_guard lock(cs_main);
        std::vector<std::shared_ptr<const CBlock>> out;
        if (locator.empty()) {
            // A getheaders with an empty locator asks for the hash_stop block alone.
            auto it = m_block_index.find(hash_stop);
            if (it != m_block_index.end()) out.push_back(it->second);
            return out;
        }
        size_t start = 0;
        for (const uint256& h : locator) {
            auto it = std::find_if(m_block_list.begin(), m_block_list.end(),
                                   [&](const auto& b) { return b->hash == h; });
            if (it != m_block_list.end()) {
                start = (it - m_block_list.begin()) + 1;
                break;
            }
        }
        for (size_t i = start; i < m_block_list.size() && out.size() < MAX_HEADERS_RESULTS; ++i) {
            out.push_back(m_block_list[i]);
            if (m_block_list[i]->hash == hash_stop) break;
        }
        return out;
    }

private:
    mutable std::mutex cs_main;
    CTxMemPool& m_mempool;
    std::map<uint256, std::shared_ptr<const CBlock>> m_block_index;
    std::vector<std::shared_ptr<const CBlock>> m_block_list; // in the order we learnt them
    int m_tip_height = 0;
};

// ===========================================================================
// Networking (src/net.h, src/net.cpp)
// ===========================================================================

using NodeId = int64_t;

enum Network {
    NET_UNROUTABLE = 0,
    NET_IPV4,
    NET_IPV6,
    NET_ONION,
    NET_I2P,
    NET_CJDNS,
    NET_INTERNAL,
    NET_MAX,
};

enum class ConnectionType {
    INBOUND,
    OUTBOUND_FULL_RELAY,
    MANUAL,
    FEELER,
    BLOCK_RELAY,
    ADDR_FETCH,
};

static std::string ConnectionTypeAsString(ConnectionType conn_type)
{
    switch (conn_type) {
    case ConnectionType::INBOUND: return "inbound";
    case ConnectionType::MANUAL: return "manual";
    case ConnectionType::FEELER: return "feeler";
    case ConnectionType::OUTBOUND_FULL_RELAY: return "outbound-full-relay";
    case ConnectionType::BLOCK_RELAY: return "block-relay-only";
    case ConnectionType::ADDR_FETCH: return "addr-fetch";
    }
    return "unknown";
}

enum class ConnectionDirection { In = 1, Out = 2, Both = 3 };

// A received message, as the transport hands it to the message handler.
class CNetMessage
{
public:
    DataStream m_recv;
    std::chrono::microseconds m_time{0};
    uint32_t m_message_size{0};
    uint32_t m_raw_message_size{0};
    std::string m_type;

    size_t GetMemoryUsage() const { return sizeof(CNetMessage) + m_recv.size(); }
};

// A message to send: payload plus type; the transport adds the header.
struct CSerializedNetMsg {
    CSerializedNetMsg() = default;
    CSerializedNetMsg(CSerializedNetMsg&&) = default;
    CSerializedNetMsg& operator=(CSerializedNetMsg&&) = default;
    CSerializedNetMsg(const CSerializedNetMsg&) = delete;
    CSerializedNetMsg& operator=(const CSerializedNetMsg&) = delete;

    Bytes data;
    std::string m_type;
};

// The 24-byte v1 header: magic, NUL-padded type, payload length, checksum.
struct CMessageHeader {
    static constexpr size_t MESSAGE_TYPE_SIZE = 12;
    static constexpr size_t CHECKSUM_SIZE = 4;
    static constexpr size_t HEADER_SIZE = 4 + MESSAGE_TYPE_SIZE + 4 + CHECKSUM_SIZE;

    MessageStartChars pchMessageStart{};
    char m_msg_type[MESSAGE_TYPE_SIZE]{};
    uint32_t nMessageSize{0};
    unsigned char pchChecksum[CHECKSUM_SIZE]{};

    std::string GetMessageType() const { return std::string(m_msg_type, strnlen(m_msg_type, MESSAGE_TYPE_SIZE)); }

    // Printable ASCII, then only NUL padding.
    bool IsMessageTypeValid() const
    {
        for (const char* p = m_msg_type; p < m_msg_type + MESSAGE_TYPE_SIZE; ++p) {
            if (*p == 0) {
                for (; p < m_msg_type + MESSAGE_TYPE_SIZE; ++p)
                    if (*p != 0) return false;
            } else if (*p < ' ' || *p > 0x7e) {
                return false;
            }
        }
        return true;
    }
};

static Bytes MakeV1Header(const MessageStartChars& magic, const CSerializedNetMsg& msg)
{
    Bytes h(CMessageHeader::HEADER_SIZE, 0);
    std::copy(magic.begin(), magic.end(), h.begin());
    std::memcpy(h.data() + 4, msg.m_type.data(), std::min(msg.m_type.size(), CMessageHeader::MESSAGE_TYPE_SIZE));
    WriteLE32(h.data() + 16, msg.data.size());
    const uint256 hash = Hash(msg.data);
    std::memcpy(h.data() + 20, hash.data(), CMessageHeader::CHECKSUM_SIZE);
    return h;
}

// V1Transport's receive half: frames the byte stream into messages.
// Only b-net touches it.
class V1Transport
{
public:
    V1Transport(NodeId node_id, const MessageStartChars& magic) : m_node_id(node_id), m_magic_bytes(magic) {}

    bool ReceivedMessageComplete() const { return in_data && hdr.nMessageSize == nDataPos; }

    // Consumes a prefix of msg_bytes; false means "disconnect this peer".
    bool ReceivedBytes(std::span<const unsigned char>& msg_bytes)
    {
        const int ret = in_data ? readData(msg_bytes) : readHeader(msg_bytes);
        if (ret < 0) {
            Reset();
            return false;
        }
        msg_bytes = msg_bytes.subspan(ret);
        return true;
    }

    CNetMessage GetReceivedMessage(std::chrono::microseconds time, bool& reject_message)
    {
        reject_message = false;
        vRecv.resize(hdr.nMessageSize);
        CNetMessage msg;
        msg.m_recv = DataStream(std::move(vRecv));
        msg.m_type = hdr.GetMessageType();
        msg.m_time = time;
        msg.m_message_size = hdr.nMessageSize;
        msg.m_raw_message_size = hdr.nMessageSize + CMessageHeader::HEADER_SIZE;

        const uint256 hash = Hash(std::span<const unsigned char>{msg.m_recv.data(), msg.m_recv.size()});
        if (std::memcmp(hash.data(), hdr.pchChecksum, CMessageHeader::CHECKSUM_SIZE) != 0) {
            // Dropped, but the peer stays connected, as in bitcoind.
            LogDebug("Header error: Wrong checksum (%s, %u bytes), peer=%lld\n",
                     SanitizeString(msg.m_type).c_str(), msg.m_message_size, (long long)m_node_id);
            reject_message = true;
        } else if (!hdr.IsMessageTypeValid()) {
            LogDebug("Header error: Invalid message type (%s, %u bytes), peer=%lld\n",
                     SanitizeString(msg.m_type).c_str(), msg.m_message_size, (long long)m_node_id);
            reject_message = true;
        }
        Reset();
        return msg;
    }

private:
    void Reset()
    {
        in_data = false;
        nHdrPos = 0;
        nDataPos = 0;
        hdr = CMessageHeader{};
        vRecv = Bytes{};
    }

    int readHeader(std::span<const unsigned char> msg_bytes)
    {
        const unsigned int nRemaining = CMessageHeader::HEADER_SIZE - nHdrPos;
        const unsigned int nCopy = std::min<size_t>(nRemaining, msg_bytes.size());
        std::memcpy(&hdrbuf[nHdrPos], msg_bytes.data(), nCopy);
        nHdrPos += nCopy;
        if (nHdrPos < CMessageHeader::HEADER_SIZE) return nCopy;

        std::copy(hdrbuf.begin(), hdrbuf.begin() + 4, hdr.pchMessageStart.begin());
        std::memcpy(hdr.m_msg_type, &hdrbuf[4], CMessageHeader::MESSAGE_TYPE_SIZE);
        hdr.nMessageSize = ::ReadLE32(&hdrbuf[16]);
        std::memcpy(hdr.pchChecksum, &hdrbuf[20], CMessageHeader::CHECKSUM_SIZE);

        if (hdr.pchMessageStart != m_magic_bytes) {
            LogDebug("Header error: Wrong MessageStart %02x%02x%02x%02x received, peer=%lld\n",
                     hdrbuf[0], hdrbuf[1], hdrbuf[2], hdrbuf[3], (long long)m_node_id);
            return -1;
        }
        // Exactly MAX_PROTOCOL_MESSAGE_LENGTH is still fine; one byte more is not.
        if (hdr.nMessageSize > MAX_SIZE || hdr.nMessageSize > MAX_PROTOCOL_MESSAGE_LENGTH) {
            LogDebug("Header error: Size too large (%s, %u bytes), peer=%lld\n",
                     SanitizeString(hdr.GetMessageType()).c_str(), hdr.nMessageSize, (long long)m_node_id);
            return -1;
        }
        in_data = true;
        return nCopy;
    }

    int readData(std::span<const unsigned char> msg_bytes)
    {
        const unsigned int nRemaining = hdr.nMessageSize - nDataPos;
        const unsigned int nCopy = std::min<size_t>(nRemaining, msg_bytes.size());
        // Grow as data arrives rather than trusting the header's length up front.
        if (vRecv.size() < nDataPos + nCopy) {
            vRecv.resize(std::min<size_t>(hdr.nMessageSize, nDataPos + nCopy + 256 * 1024));
        }
        std::memcpy(&vRecv[nDataPos], msg_bytes.data(), nCopy);
        nDataPos += nCopy;
        return nCopy;
    }

    const NodeId m_node_id;
    const MessageStartChars m_magic_bytes;
    bool in_data = false;
    std::array<unsigned char, CMessageHeader::HEADER_SIZE> hdrbuf{};
    unsigned int nHdrPos = 0;
    CMessageHeader hdr;
    Bytes vRecv;
    unsigned int nDataPos = 0;
};

// One peer connection.
class CNode
{
public:
    CNode(NodeId id, int sock, std::string addr_name, ConnectionType conn_type, uint64_t local_nonce)
        : m_sock(sock), m_connected(GetTimeSeconds()), m_addr_name(std::move(addr_name)),
          m_conn_type(conn_type), id(id), nLocalHostNonce(local_nonce), m_transport(id, REGTEST_MESSAGE_START)
    {
    }
    ~CNode()
    {
        if (m_sock >= 0) ::close(m_sock);
    }
    CNode(const CNode&) = delete;
    CNode& operator=(const CNode&) = delete;

    NodeId GetId() const { return id; }
    uint64_t GetLocalNonce() const { return nLocalHostNonce; }
    bool IsInboundConn() const { return m_conn_type == ConnectionType::INBOUND; }
    std::string ConnectionTypeAsString() const { return ::ConnectionTypeAsString(m_conn_type); }
    Network ConnectedThroughNetwork() const { return m_network; }
    int GetCommonVersion() const { return m_greatest_common_version; }
    void SetCommonVersion(int v) { m_greatest_common_version = v; }

    bool ReceiveMsgBytes(std::span<const unsigned char> msg_bytes, bool& complete);
    void MarkReceivedMsgsForProcessing();
    std::optional<std::pair<CNetMessage, bool>> PollMessage();
    void CloseSocketDisconnect();

    // Socket; m_sock_mutex is held across every syscall on it, so that a
    // close on another thread can never redirect I/O to a reused fd number.
    std::mutex m_sock_mutex;
    int m_sock;

    // Send queue (header and payload as separate buffers), guarded by cs_vSend.
    std::mutex cs_vSend;
    std::deque<Bytes> vSendMsg;
    size_t nSendOffset = 0;   // bytes of vSendMsg.front() already sent
    size_t m_send_memusage = 0;
    uint64_t nSendBytes = 0;

    // Received messages waiting for b-msghand.
    std::mutex m_msg_process_queue_mutex;
    std::list<CNetMessage> m_msg_process_queue;
    size_t m_msg_process_queue_size = 0;

    std::atomic_bool fDisconnect{false};
    std::atomic_bool fSuccessfullyConnected{false};
    std::atomic_bool fPauseRecv{false};
    std::atomic_bool fPauseSend{false};
    std::atomic<int> nVersion{0};

    const std::chrono::seconds m_connected;
    const std::string m_addr_name;
    const ConnectionType m_conn_type;
    // bitcoind reports NET_UNROUTABLE for loopback peers (CNetAddr::GetNetClass);
    // the twin only ever talks IPv4 on loopback and reports NET_IPV4, the value
    // a real IPv4 peer produces.
    const Network m_network = NET_IPV4;

private:
    const NodeId id;
    const uint64_t nLocalHostNonce;
    std::atomic<int> m_greatest_common_version{INIT_PROTO_VERSION};

    // Receive side, b-net only.
    V1Transport m_transport;
    std::list<CNetMessage> vRecvMsg;
    uint64_t nRecvBytes = 0;
};

// Runs on b-net for every chunk read from the socket: frames complete
// messages into vRecvMsg. Returns false on a transport error (wrong magic,
// oversized message), after which the caller disconnects.
TWIN_PROBED bool CNode::ReceiveMsgBytes(std::span<const unsigned char> msg_bytes, bool& complete)
{
    complete = false;
    const auto time = GetTimeMicros();
    nRecvBytes += msg_bytes.size();
    while (msg_bytes.size() > 0) {
        if (!m_transport.ReceivedBytes(msg_bytes)) return false;
        if (m_transport.ReceivedMessageComplete()) {
            bool reject_message{false};
            CNetMessage msg = m_transport.GetReceivedMessage(time, reject_message);
            if (reject_message) continue;
            vRecvMsg.push_back(std::move(msg));
            complete = true;
        }
    }
    return true;
}

// Hands framed messages to b-msghand and applies -maxreceivebuffer back-pressure.
void CNode::MarkReceivedMsgsForProcessing()
{
    size_t nSizeAdded = 0;
    for (const auto& msg : vRecvMsg) nSizeAdded += msg.GetMemoryUsage();
    std::lock_guard lock(m_msg_process_queue_mutex);
    m_msg_process_queue.splice(m_msg_process_queue.end(), vRecvMsg);
    m_msg_process_queue_size += nSizeAdded;
    fPauseRecv = m_msg_process_queue_size > DEFAULT_MAXRECEIVEBUFFER;
}

// Takes ONE message; the bool says whether more are waiting.
std::optional<std::pair<CNetMessage, bool>> CNode::PollMessage()
{
    std::lock_guard lock(m_msg_process_queue_mutex);
    if (m_msg_process_queue.empty()) return std::nullopt;
    std::list<CNetMessage> msgs;
    msgs.splice(msgs.begin(), m_msg_process_queue, m_msg_process_queue.begin());
    m_msg_process_queue_size -= msgs.front().GetMemoryUsage();
    fPauseRecv = m_msg_process_queue_size > DEFAULT_MAXRECEIVEBUFFER;
    return std::make_pair(std::move(msgs.front()), !m_msg_process_queue.empty());
}

// Fires net:closed_connection exactly once, whoever closes first.
void CNode::CloseSocketDisconnect()
{
    fDisconnect = true;
    std::lock_guard lock(m_sock_mutex);
    if (m_sock >= 0) {
        LogDebug("Resetting socket for peer=%lld\n", (long long)GetId());
        ::close(m_sock);
        m_sock = -1;

        TRACEPOINT(net, closed_connection,
            GetId(),
            m_addr_name.c_str(),
            ConnectionTypeAsString().c_str(),
            ConnectedThroughNetwork(),
            Ticks<std::chrono::seconds>(m_connected));
    }
}

// The message-processing side of the node, as CConnman sees it.
class NetEventsInterface
{
public:
    // Held by b-msghand for as long as it runs: everything message
    // processing touches is single-threaded under it.
    static std::mutex g_msgproc_mutex;

    virtual void InitializeNode(const CNode& node, ServiceFlags our_services) = 0;
    virtual void FinalizeNode(const CNode& node) = 0;
    virtual bool ProcessMessages(CNode* pnode, std::atomic<bool>& interrupt) = 0;
    virtual bool SendMessages(CNode* pnode) = 0;

protected:
    ~NetEventsInterface() = default;
};
std::mutex NetEventsInterface::g_msgproc_mutex;

struct ConnectTarget {
    std::string name; // as given on the command line; becomes m_addr_name
    sockaddr_in addr;
};

class CConnman
{
public:
    struct Options {
        uint16_t port = REGTEST_DEFAULT_PORT;
        int max_inbound = DEFAULT_MAX_INBOUND;
        std::vector<ConnectTarget> connect;
    };

    explicit CConnman(Options opts) : m_opts(std::move(opts)) {}
    ~CConnman()
    {
        Interrupt();
        Stop();
    }

    bool Start(NetEventsInterface& msgproc, std::string& error);
    void Interrupt();
    void Stop();
    uint16_t GetListenPort() const { return m_listen_port; }

    void PushMessage(CNode* pnode, CSerializedNetMsg&& msg);
    std::pair<size_t, bool> SocketSendData(CNode& node) const;
    void ThreadMessageHandler();
    void SocketHandler();

    size_t GetNodeCount(ConnectionDirection flags) const;
    bool CheckIncomingNonce(uint64_t nonce) const;
    void WakeMessageHandler() const;
    void WakeSocketHandler() const;

private:
    void ThreadSocketHandler();
    void ThreadOpenConnections();
    bool OpenNetworkConnection(const ConnectTarget& target);
    void SocketHandlerConnected(const std::vector<std::shared_ptr<CNode>>& nodes, const std::vector<pollfd>& fds);
    void AcceptConnection();
    void CreateNodeFromAcceptedSocket(int sock, const sockaddr_in& addr);
    bool AttemptToEvictConnection();
    void DisconnectNodes();
    std::vector<std::shared_ptr<CNode>> NodesSnapshot() const;
    NodeId GetNewNodeId() { return nLastNodeId.fetch_add(1); }
    bool InterruptibleSleep(std::chrono::milliseconds d);

    const Options m_opts;
    NetEventsInterface* m_msgproc = nullptr;
    int m_listen_sock = -1;
    uint16_t m_listen_port = 0;
    int m_wake_fd = -1; // eventfd that breaks b-net out of poll()

    mutable std::mutex m_nodes_mutex;
    std::vector<std::shared_ptr<CNode>> m_nodes;
    std::atomic<NodeId> nLastNodeId{0};

    mutable std::mutex mutexMsgProc;
    mutable std::condition_variable condMsgProc;
    mutable bool fMsgProcWake = false;

    std::atomic<bool> flagInterruptMsgProc{false};
    std::atomic<bool> interruptNet{false};
    std::mutex m_interrupt_mutex;
    std::condition_variable m_interrupt_cv;

    std::thread threadSocketHandler;
    std::thread threadOpenConnections;
    std::thread threadMessageHandler;
    bool m_stopped = false;
};

static void SetThreadName(const char* name) { pthread_setname_np(pthread_self(), name); }

static void SetSocketNoDelay(int sock)
{
    int one = 1;
    setsockopt(sock, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

static std::string AddrToString(const sockaddr_in& sa)
{
    char ip[INET_ADDRSTRLEN] = {};
    inet_ntop(AF_INET, &sa.sin_addr, ip, sizeof(ip));
    return std::string(ip) + ":" + std::to_string(ntohs(sa.sin_port));
}

bool CConnman::Start(NetEventsInterface& msgproc, std::string& error)
{
    m_msgproc = &msgproc;

    m_listen_sock = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (m_listen_sock < 0) {
        error = std::string("socket: ") + std::strerror(errno);
        return false;
    }
    int one = 1;
    setsockopt(m_listen_sock, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(m_opts.port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(m_listen_sock, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0) {
        error = "Unable to bind to 127.0.0.1:" + std::to_string(m_opts.port) + " on this computer: " + std::strerror(errno);
        return false;
    }
    if (listen(m_listen_sock, SOMAXCONN) != 0) {
        error = std::string("listen: ") + std::strerror(errno);
        return false;
    }
    socklen_t len = sizeof(sa);
    getsockname(m_listen_sock, reinterpret_cast<sockaddr*>(&sa), &len);
    m_listen_port = ntohs(sa.sin_port);

    m_wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (m_wake_fd < 0) {
        error = std::string("eventfd: ") + std::strerror(errno);
        return false;
    }

    threadSocketHandler = std::thread([this] {
        SetThreadName("b-net");
        ThreadSocketHandler();
    });
    if (!m_opts.connect.empty()) {
        threadOpenConnections = std::thread([this] {
            SetThreadName("b-opencon");
            ThreadOpenConnections();
        });
    }
    threadMessageHandler = std::thread([this] {
        SetThreadName("b-msghand");
        ThreadMessageHandler();
    });
    return true;
}

void CConnman::Interrupt()
{
    {
        std::lock_guard lock(mutexMsgProc);
        flagInterruptMsgProc = true;
    }
    condMsgProc.notify_all();
    {
        std::lock_guard lock(m_interrupt_mutex);
        interruptNet = true;
    }
    m_interrupt_cv.notify_all();
    WakeSocketHandler();
}

// StopThreads() + StopNodes(): every remaining connection is closed, firing
// net:closed_connection, as bitcoind does on shutdown.
void CConnman::Stop()
{
    if (m_stopped) return;
    m_stopped = true;
    if (threadMessageHandler.joinable()) threadMessageHandler.join();
    if (threadOpenConnections.joinable()) threadOpenConnections.join();
    if (threadSocketHandler.joinable()) threadSocketHandler.join();

    std::vector<std::shared_ptr<CNode>> nodes;
    {
        std::lock_guard lock(m_nodes_mutex);
        nodes.swap(m_nodes);
    }
    for (const auto& pnode : nodes) {
        pnode->CloseSocketDisconnect();
        if (m_msgproc) m_msgproc->FinalizeNode(*pnode);
    }
    if (m_listen_sock >= 0) ::close(m_listen_sock);
    if (m_wake_fd >= 0) ::close(m_wake_fd);
    m_listen_sock = m_wake_fd = -1;
}

void CConnman::WakeMessageHandler() const
{
    {
        std::lock_guard lock(mutexMsgProc);
        fMsgProcWake = true;
    }
    condMsgProc.notify_one();
}

void CConnman::WakeSocketHandler() const
{
    if (m_wake_fd < 0) return;
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t r = ::write(m_wake_fd, &one, sizeof(one));
}

bool CConnman::InterruptibleSleep(std::chrono::milliseconds d)
{
    std::unique_lock lock(m_interrupt_mutex);
    return !m_interrupt_cv.wait_for(lock, d, [this] { return interruptNet.load(); });
}

std::vector<std::shared_ptr<CNode>> CConnman::NodesSnapshot() const
{
    std::lock_guard lock(m_nodes_mutex);
    return m_nodes;
}

size_t CConnman::GetNodeCount(ConnectionDirection flags) const
{
    std::lock_guard lock(m_nodes_mutex);
    if (flags == ConnectionDirection::Both) return m_nodes.size();
    size_t n = 0;
    for (const auto& pnode : m_nodes) {
        const auto dir = pnode->IsInboundConn() ? ConnectionDirection::In : ConnectionDirection::Out;
        if (int(flags) & int(dir)) ++n;
    }
    return n;
}

// Detects connecting to ourselves: the version nonce comes back to us.
bool CConnman::CheckIncomingNonce(uint64_t nonce) const
{
    std::lock_guard lock(m_nodes_mutex);
    for (const auto& pnode : m_nodes) {
        if (!pnode->fSuccessfullyConnected && !pnode->IsInboundConn() && pnode->GetLocalNonce() == nonce) return false;
    }
    return true;
}

// Queues a message for a peer, firing net:outbound_message. Called on
// b-msghand (replies, announcements); if the queue was empty it tries an
// "optimistic" send right here on the caller's thread, as bitcoind does, and
// leaves whatever the socket did not take to b-net.
TWIN_PROBED void CConnman::PushMessage(CNode* pnode, CSerializedNetMsg&& msg)
{
    const size_t nMessageSize = msg.data.size();
    LogDebug("sending %s (%zu bytes) peer=%lld\n", msg.m_type.c_str(), nMessageSize, (long long)pnode->GetId());

    TRACEPOINT(net, outbound_message,
        pnode->GetId(),
        pnode->m_addr_name.c_str(),
        pnode->ConnectionTypeAsString().c_str(),
        msg.m_type.c_str(),
        msg.data.size(),
        msg.data.data()
    );

    Bytes header = MakeV1Header(REGTEST_MESSAGE_START, msg);
    std::lock_guard lock(pnode->cs_vSend);
    const bool queue_was_empty = pnode->vSendMsg.empty();
    pnode->m_send_memusage += header.size() + nMessageSize;
    pnode->fPauseSend = pnode->m_send_memusage > DEFAULT_MAXSENDBUFFER;
    pnode->vSendMsg.push_back(std::move(header));
    if (nMessageSize > 0) pnode->vSendMsg.push_back(std::move(msg.data));
    if (queue_was_empty) {
        const auto [sent, data_left] = SocketSendData(*pnode);
        if (data_left) WakeSocketHandler(); // b-net now has to poll for POLLOUT
    }
}

// Writes as much of the send queue as the socket takes without blocking.
// Caller holds node.cs_vSend. Returns (bytes sent, data left).
TWIN_PROBED std::pair<size_t, bool> CConnman::SocketSendData(CNode& node) const
{
    size_t nSentSize = 0;
    while (!node.vSendMsg.empty()) {
        const Bytes& data = node.vSendMsg.front();
        const size_t len = data.size() - node.nSendOffset;
        ssize_t nBytes;
        int err = 0;
        {
            std::lock_guard lock(node.m_sock_mutex);
            if (node.m_sock < 0) break;
            nBytes = ::send(node.m_sock, data.data() + node.nSendOffset, len, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (nBytes < 0) err = errno;
        }
        if (nBytes > 0) {
            node.nSendBytes += nBytes;
            node.nSendOffset += nBytes;
            node.m_send_memusage -= nBytes;
            nSentSize += nBytes;
            if (node.nSendOffset == data.size()) {
                node.nSendOffset = 0;
                node.vSendMsg.pop_front();
            } else {
                break; // socket buffer full
            }
        } else {
            if (nBytes < 0 && err != EWOULDBLOCK && err != EAGAIN && err != EINTR) {
                LogDebug("socket send error for peer=%lld: %s\n", (long long)node.GetId(), std::strerror(err));
                node.CloseSocketDisconnect();
            }
            break;
        }
    }
    node.fPauseSend = node.m_send_memusage > DEFAULT_MAXSENDBUFFER;
    return {nSentSize, !node.vSendMsg.empty()};
}

// b-msghand: round-robin over the peers, one message in and any pending
// output per peer per round; sleeps on condMsgProc when nobody has work.
TWIN_PROBED void CConnman::ThreadMessageHandler()
{
    std::lock_guard msgproc_lock(NetEventsInterface::g_msgproc_mutex);

    while (!flagInterruptMsgProc) {
        bool fMoreWork = false;
        {
            const auto snap = NodesSnapshot();
            for (const auto& pnode : snap) {
                if (pnode->fDisconnect) continue;

                // Receive messages
                const bool fMoreNodeWork = m_msgproc->ProcessMessages(pnode.get(), flagInterruptMsgProc);
                fMoreWork |= (fMoreNodeWork && !pnode->fPauseSend);
                if (flagInterruptMsgProc) return;
                // Send messages
                m_msgproc->SendMessages(pnode.get());
                if (flagInterruptMsgProc) return;
            }
        }

        std::unique_lock lock(mutexMsgProc);
        if (!fMoreWork) {
            // Same 100 ms cap as bitcoind: SendMessages' timers (pings) need a tick.
            condMsgProc.wait_until(lock, std::chrono::steady_clock::now() + std::chrono::milliseconds(100),
                                   [this] { return fMsgProcWake; });
        }
        fMsgProcWake = false;
    }
}

// b-net main loop: ThreadSocketHandler() in net.cpp.
void CConnman::ThreadSocketHandler()
{
    while (!interruptNet) {
        DisconnectNodes();
        SocketHandler();
    }
}

// One round of socket I/O: poll every connection (and the listening socket),
// then read, write and accept.
TWIN_PROBED void CConnman::SocketHandler()
{
    const auto nodes = NodesSnapshot();
    std::vector<pollfd> fds;
    fds.reserve(2 + nodes.size());
    fds.push_back({m_wake_fd, POLLIN, 0});
    fds.push_back({m_listen_sock, POLLIN, 0});
    for (const auto& pnode : nodes) {
        bool select_send;
        {
            std::lock_guard lock(pnode->cs_vSend);
            select_send = !pnode->vSendMsg.empty();
        }
        int fd;
        {
            std::lock_guard lock(pnode->m_sock_mutex);
            fd = pnode->m_sock;
        }
        // Like bitcoind: while we have something to send to a peer, we do not
        // read from it, so a peer that does not read cannot make us queue
        // unbounded replies.
        short events = 0;
        if (select_send) {
            events = POLLOUT;
        } else if (!pnode->fPauseRecv) {
            events = POLLIN;
        }
        if (events == 0 || fd < 0) fd = -1; // poll() ignores negative fds, keeps indices aligned
        fds.push_back({fd, events, 0});
    }

    // Every state change that alters the poll set writes m_wake_fd; the
    // timeout is only a safety net.
    const int rc = ::poll(fds.data(), fds.size(), 1000);
    if (rc < 0) {
        if (errno != EINTR) LogDebug("poll failed: %s\n", std::strerror(errno));
        return;
    }
    if (fds[0].revents & POLLIN) {
        uint64_t v;
        [[maybe_unused]] ssize_t r = ::read(m_wake_fd, &v, sizeof(v));
    }
    SocketHandlerConnected(nodes, fds);
    if (fds[1].revents & POLLIN) AcceptConnection();
}

// Kept out of line, like bitcoind's (which its caller does not inline
// either), so that its 64 KiB receive buffer is a stack frame of its own
// between SocketHandler and ReceiveMsgBytes: a stack walker that copies too
// little of b-net's stack loses the frames above it, as with bitcoind.
__attribute__((noinline)) void CConnman::SocketHandlerConnected(const std::vector<std::shared_ptr<CNode>>& nodes,
                                                                const std::vector<pollfd>& fds)
{
    for (size_t i = 0; i < nodes.size(); ++i) {
        if (interruptNet) return;
        CNode* pnode = nodes[i].get();
        const short rev = fds[2 + i].revents;
        if (rev == 0) continue;

        if (rev & POLLOUT) {
            std::lock_guard lock(pnode->cs_vSend);
            const bool was_paused = pnode->fPauseSend;
            SocketSendData(*pnode);
            // Send buffer drained below -maxsendbuffer: b-msghand may resume this peer.
            if (was_paused && !pnode->fPauseSend) WakeMessageHandler();
        }
        if (rev & (POLLIN | POLLERR | POLLHUP)) {
            // typical socket buffer is 8K-64K
            uint8_t pchBuf[0x10000];
            ssize_t nBytes;
            int err = 0;
            {
                std::lock_guard lock(pnode->m_sock_mutex);
                if (pnode->m_sock < 0) continue;
                nBytes = ::recv(pnode->m_sock, pchBuf, sizeof(pchBuf), MSG_DONTWAIT);
                if (nBytes < 0) err = errno;
            }
            if (nBytes > 0) {
                bool notify = false;
                if (!pnode->ReceiveMsgBytes({pchBuf, size_t(nBytes)}, notify)) {
                    LogDebug("receiving message bytes failed, disconnecting peer=%lld\n", (long long)pnode->GetId());
                    pnode->CloseSocketDisconnect();
                }
                if (notify) {
                    pnode->MarkReceivedMsgsForProcessing();
                    WakeMessageHandler();
                }
            } else if (nBytes == 0) {
                if (!pnode->fDisconnect) LogDebug("socket closed, disconnecting peer=%lld\n", (long long)pnode->GetId());
                pnode->CloseSocketDisconnect();
            } else if (err != EWOULDBLOCK && err != EAGAIN && err != EINTR) {
                if (!pnode->fDisconnect) {
                    LogDebug("socket recv error, disconnecting peer=%lld: %s\n",
                             (long long)pnode->GetId(), std::strerror(err));
                }
                pnode->CloseSocketDisconnect();
            }
        }
    }
}

void CConnman::AcceptConnection()
{
    for (;;) {
        sockaddr_in sa{};
        socklen_t len = sizeof(sa);
        const int sock = ::accept4(m_listen_sock, reinterpret_cast<sockaddr*>(&sa), &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (sock < 0) {
            if (errno == EINTR) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK) LogDebug("socket error accept failed: %s\n", std::strerror(errno));
            return;
        }
        CreateNodeFromAcceptedSocket(sock, sa);
    }
}

void CConnman::CreateNodeFromAcceptedSocket(int sock, const sockaddr_in& addr)
{
    int nInbound = 0;
    {
        std::lock_guard lock(m_nodes_mutex);
        for (const auto& pnode : m_nodes) {
            if (pnode->IsInboundConn() && !pnode->fDisconnect) ++nInbound;
        }
    }
    SetSocketNoDelay(sock);

    if (nInbound >= m_opts.max_inbound) {
        if (!AttemptToEvictConnection()) {
            LogDebug("failed to find an eviction candidate - connection dropped (full)\n");
            ::close(sock);
            return;
        }
    }

    const NodeId id = GetNewNodeId();
    auto pnode = std::make_shared<CNode>(id, sock, AddrToString(addr), ConnectionType::INBOUND, GetRand64());
    m_msgproc->InitializeNode(*pnode, ServiceFlags(NODE_NETWORK | NODE_WITNESS));
    {
        std::lock_guard lock(m_nodes_mutex);
        m_nodes.push_back(pnode);
    }
    LogDebug("connection from %s accepted, peer=%lld\n", pnode->m_addr_name.c_str(), (long long)id);

    TRACEPOINT(net, inbound_connection,
        pnode->GetId(),
        pnode->m_addr_name.c_str(),
        pnode->ConnectionTypeAsString().c_str(),
        pnode->ConnectedThroughNetwork(),
        GetNodeCount(ConnectionDirection::In));
}

// bitcoind picks its victim with an elaborate protection scheme
// (node/eviction.cpp); the twin evicts the oldest inbound peer, which is
// predictable in tests. Unlike bitcoind, which leaves the socket to the next
// DisconnectNodes() pass, we close it at once, so the order of events is
// always evicted_inbound_connection, closed_connection, then the new peer's
// inbound_connection (whose count no longer includes the evicted peer).
bool CConnman::AttemptToEvictConnection()
{
    std::shared_ptr<CNode> pnode;
    {
        std::lock_guard lock(m_nodes_mutex);
        for (const auto& candidate : m_nodes) {
            if (!candidate->IsInboundConn() || candidate->fDisconnect) continue;
            if (!pnode || candidate->GetId() < pnode->GetId()) pnode = candidate;
        }
    }
    if (!pnode) return false;
    LogDebug("selected %s connection for eviction, peer=%lld\n",
             pnode->ConnectionTypeAsString().c_str(), (long long)pnode->GetId());

    TRACEPOINT(net, evicted_inbound_connection,
        pnode->GetId(),
        pnode->m_addr_name.c_str(),
        pnode->ConnectionTypeAsString().c_str(),
        pnode->ConnectedThroughNetwork(),
        Ticks<std::chrono::seconds>(pnode->m_connected));

    pnode->fDisconnect = true;
    DisconnectNodes();
    return true;
}

// Drops peers marked fDisconnect (by b-msghand, an eviction, or a socket
// error), closing their socket if still open.
void CConnman::DisconnectNodes()
{
    std::vector<std::shared_ptr<CNode>> disconnected;
    {
        std::lock_guard lock(m_nodes_mutex);
        auto it = std::stable_partition(m_nodes.begin(), m_nodes.end(), [](const auto& n) { return !n->fDisconnect; });
        disconnected.assign(it, m_nodes.end());
        m_nodes.erase(it, m_nodes.end());
    }
    for (const auto& pnode : disconnected) {
        pnode->CloseSocketDisconnect();
        m_msgproc->FinalizeNode(*pnode);
    }
}

// b-opencon: one outbound-full-relay connection per -connect, retried until it
// succeeds (the target may start after us). Not re-opened once it closes.
void CConnman::ThreadOpenConnections()
{
    for (const ConnectTarget& target : m_opts.connect) {
        while (!interruptNet) {
            if (OpenNetworkConnection(target)) break;
            if (!InterruptibleSleep(std::chrono::milliseconds(500))) return;
        }
    }
}

bool CConnman::OpenNetworkConnection(const ConnectTarget& target)
{
    const int sock = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (sock < 0) return false;
    timeval tv{5, 0};
    setsockopt(sock, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)); // bounds the blocking connect()
    if (::connect(sock, reinterpret_cast<const sockaddr*>(&target.addr), sizeof(target.addr)) != 0) {
        LogDebug("connect() to %s failed: %s\n", target.name.c_str(), std::strerror(errno));
        ::close(sock);
        return false;
    }
    fcntl(sock, F_SETFL, fcntl(sock, F_GETFL) | O_NONBLOCK);
    SetSocketNoDelay(sock);

    const NodeId id = GetNewNodeId();
    auto pnode = std::make_shared<CNode>(id, sock, target.name, ConnectionType::OUTBOUND_FULL_RELAY, GetRand64());
    m_msgproc->InitializeNode(*pnode, ServiceFlags(NODE_NETWORK | NODE_WITNESS));
    {
        std::lock_guard lock(m_nodes_mutex);
        m_nodes.push_back(pnode);
    }
    LogDebug("connected to %s, peer=%lld\n", target.name.c_str(), (long long)id);

    TRACEPOINT(net, outbound_connection,
        pnode->GetId(),
        pnode->m_addr_name.c_str(),
        pnode->ConnectionTypeAsString().c_str(),
        pnode->ConnectedThroughNetwork(),
        GetNodeCount(ConnectionDirection::Out));

    WakeSocketHandler();  // add the socket to b-net's poll set
    WakeMessageHandler(); // SendMessages() sends our version
    return true;
}

// ===========================================================================
// Message processing (src/net_processing.h, src/net_processing.cpp)
// ===========================================================================

class PeerManager : public CValidationInterface, public NetEventsInterface
{
public:
    static std::unique_ptr<PeerManager> make(CConnman& connman, ChainstateManager& chainman, CTxMemPool& pool);
    ~PeerManager() override = default;

    virtual void ProcessMessage(CNode& pfrom, const std::string& msg_type, DataStream& vRecv,
                                const std::chrono::microseconds time_received,
                                const std::atomic<bool>& interruptMsgProc) = 0;
};

// Twin-only CPU burner for profiling tests: `iterations` SHA-256 compressions,
// with the result stored where the optimiser must assume it is read.
volatile uint32_t g_twin_burn_sink;
__attribute__((noinline, noclone)) void TwinBurnCpu(uint32_t iterations)
{
    uint32_t state[8];
    std::copy(std::begin(sha256::INIT), std::end(sha256::INIT), state);
    unsigned char chunk[64] = {};
    for (uint32_t i = 0; i < iterations; ++i) {
        WriteLE32(chunk, i);
        sha256::Transform(state, chunk);
    }
    g_twin_burn_sink = state[0] ^ state[7];
}

namespace {

// Per-peer protocol state. Apart from construction (b-net / b-opencon,
// before the peer is visible to b-msghand) only b-msghand touches it, under
// g_msgproc_mutex.
struct Peer {
    Peer(NodeId id, ServiceFlags our_services) : m_id(id), m_our_services(our_services) {}

    const NodeId m_id;
    const ServiceFlags m_our_services; // what we advertise to this peer
    bool m_outbound_version_message_sent = false;
    bool m_successfully_connected = false; // mirrors CNode::fSuccessfullyConnected for relay decisions
    bool m_wtxid_relay = false;
    bool m_wants_addrv2 = false;
    bool m_prefers_headers = false;
    bool m_relay_txs = true;
    bool m_sent_feefilter = false;
    int m_starting_height = -1;
    std::string m_user_agent;
    CAmount m_fee_filter_received = 0;

    uint64_t m_ping_nonce_sent = 0;
    std::chrono::microseconds m_ping_start{0};
    std::optional<std::chrono::microseconds> m_min_ping_time;

    std::deque<CInv> m_getdata_requests;  // what the peer asked us for, served by ProcessGetData
    std::vector<CInv> m_getdata_to_send;  // what we will ask the peer for, from SendMessages
    std::vector<CInv> m_inv_to_send;      // our announcements, from SendMessages
    std::set<uint256> m_known_inventory;  // what the peer has or was told about: never announced back

    void AddKnown(const uint256& hash)
    {
        if (m_known_inventory.size() >= 100000) m_known_inventory.clear(); // bounded, like a rolling filter
        m_known_inventory.insert(hash);
    }
    bool Knows(const uint256& hash) const { return m_known_inventory.count(hash) > 0; }
};
using PeerRef = std::shared_ptr<Peer>;

class PeerManagerImpl final : public PeerManager
{
public:
    PeerManagerImpl(CConnman& connman, ChainstateManager& chainman, CTxMemPool& pool)
        : m_connman(connman), m_chainman(chainman), m_mempool(pool)
    {
    }

    // CValidationInterface
    void TransactionAddedToMempool(const CTransactionRef& tx) override;
    void BlockConnected(const std::shared_ptr<const CBlock>& block, int height) override;

    // NetEventsInterface
    void InitializeNode(const CNode& node, ServiceFlags our_services) override;
    void FinalizeNode(const CNode& node) override;
    bool ProcessMessages(CNode* pfrom, std::atomic<bool>& interrupt) override;
    bool SendMessages(CNode* pto) override;

    // PeerManager
    void ProcessMessage(CNode& pfrom, const std::string& msg_type, DataStream& vRecv,
                        const std::chrono::microseconds time_received,
                        const std::atomic<bool>& interruptMsgProc) override;

private:
    PeerRef GetPeerRef(NodeId id) const;
    std::vector<PeerRef> AllPeers() const;
    void MakeAndPushMessage(CNode& node, const char* msg_type, Bytes payload = {});
    void PushNodeVersion(CNode& pnode, const Peer& peer);
    void MaybeSendPing(CNode& node_to, Peer& peer, std::chrono::microseconds now);
    void MaybeSendFeefilter(CNode& pto, Peer& peer);
    void ProcessGetData(CNode& pfrom, Peer& peer, const std::atomic<bool>& interruptMsgProc);
    void Misbehaving(Peer& peer, const std::string& message);

    CConnman& m_connman;
    ChainstateManager& m_chainman;
    CTxMemPool& m_mempool;

    mutable std::mutex m_peer_mutex;
    std::map<NodeId, PeerRef> m_peer_map;
};

PeerRef PeerManagerImpl::GetPeerRef(NodeId id) const
{
    std::lock_guard lock(m_peer_mutex);
    auto it = m_peer_map.find(id);
    return it == m_peer_map.end() ? nullptr : it->second;
}

std::vector<PeerRef> PeerManagerImpl::AllPeers() const
{
    std::lock_guard lock(m_peer_mutex);
    std::vector<PeerRef> v;
    for (const auto& [id, peer] : m_peer_map) v.push_back(peer);
    return v;
}

void PeerManagerImpl::InitializeNode(const CNode& node, ServiceFlags our_services)
{
    std::lock_guard lock(m_peer_mutex);
    m_peer_map.emplace(node.GetId(), std::make_shared<Peer>(node.GetId(), our_services));
}

void PeerManagerImpl::FinalizeNode(const CNode& node)
{
    std::lock_guard lock(m_peer_mutex);
    m_peer_map.erase(node.GetId());
}

void PeerManagerImpl::MakeAndPushMessage(CNode& node, const char* msg_type, Bytes payload)
{
    CSerializedNetMsg msg;
    msg.m_type = msg_type;
    msg.data = std::move(payload);
    m_connman.PushMessage(&node, std::move(msg));
}

// Fires net:misbehaving_connection. bitcoind then disconnects the peer
// (MaybeDiscourageAndDisconnect); the twin keeps it, so a test can go on
// using the connection after provoking the probe.
void PeerManagerImpl::Misbehaving(Peer& peer, const std::string& message)
{
    LogDebug("Misbehaving: peer=%lld: %s\n", (long long)peer.m_id, message.c_str());
    TRACEPOINT(net, misbehaving_connection,
        peer.m_id,
        message.c_str()
    );
}

void PeerManagerImpl::PushNodeVersion(CNode& pnode, const Peer& peer)
{
    const uint64_t my_services{peer.m_our_services};
    const int64_t nTime{Ticks<std::chrono::seconds>(GetTimeSeconds())};
    const int nNodeStartingHeight{m_chainman.Height()};
    Bytes p;
    SerLE32(p, PROTOCOL_VERSION);
    SerLE64(p, my_services);
    SerLE64(p, nTime);
    // addrYou and addrMe, pre-31402 CAddress form. bitcoind sends an all-zero
    // address for peers that are not routable, and loopback is not.
    SerLE64(p, NODE_NONE);
    p.insert(p.end(), 16, 0);
    SerBE16(p, 0);
    SerLE64(p, my_services);
    p.insert(p.end(), 16, 0);
    SerBE16(p, 0);
    SerLE64(p, pnode.GetLocalNonce());
    SerString(p, USER_AGENT);
    SerLE32(p, nNodeStartingHeight);
    SerU8(p, 1); // fRelay
    MakeAndPushMessage(pnode, NetMsgType::VERSION, std::move(p));
    LogDebug("send version message: version %d, blocks=%d, peer=%lld\n",
             PROTOCOL_VERSION, nNodeStartingHeight, (long long)peer.m_id);
}

// Relay: a transaction newly in the mempool is announced to every
// handshaken peer that does not already know it (so never back to the peer
// that sent it), by wtxid to wtxidrelay peers and by txid to the others.
void PeerManagerImpl::TransactionAddedToMempool(const CTransactionRef& tx)
{
    for (const PeerRef& peer : AllPeers()) {
        if (!peer->m_successfully_connected || !peer->m_relay_txs) continue;
        if (peer->Knows(tx->txid) || peer->Knows(tx->wtxid)) continue;
        const CInv inv{peer->m_wtxid_relay ? uint32_t{MSG_WTX} : uint32_t{MSG_TX},
                       peer->m_wtxid_relay ? tx->wtxid : tx->txid};
        peer->m_inv_to_send.push_back(inv);
        peer->AddKnown(inv.hash);
    }
}

void PeerManagerImpl::BlockConnected(const std::shared_ptr<const CBlock>& block, int /*height*/)
{
    for (const PeerRef& peer : AllPeers()) {
        if (!peer->m_successfully_connected || peer->Knows(block->hash)) continue;
        peer->m_inv_to_send.push_back(CInv{MSG_BLOCK, block->hash});
        peer->AddKnown(block->hash);
    }
}

// Serves queued getdata requests: as many transactions as the send buffer
// allows, then at most one block per call (they are big), as bitcoind does.
// Unlike bitcoind, a block we do not have is answered with notfound too.
void PeerManagerImpl::ProcessGetData(CNode& pfrom, Peer& peer, const std::atomic<bool>& interruptMsgProc)
{
    auto it = peer.m_getdata_requests.begin();
    std::vector<CInv> vNotFound;

    while (it != peer.m_getdata_requests.end() && it->IsGenTxMsg()) {
        if (interruptMsgProc) return;
        if (pfrom.fPauseSend) break;
        const CInv& inv = *it++;
        const CTransactionRef tx = m_mempool.get(inv.hash, /*by_wtxid=*/inv.IsMsgWtx());
        if (tx) {
            // WTX and WITNESS_TX imply we serialize with witness
            MakeAndPushMessage(pfrom, NetMsgType::TX, inv.IsMsgTx() ? tx->ser_no_witness : tx->ser_with_witness);
        } else {
            vNotFound.push_back(inv);
        }
    }

    if (it != peer.m_getdata_requests.end() && !pfrom.fPauseSend) {
        const CInv& inv = *it++;
        if (inv.IsGenBlkMsg()) {
            if (const auto block = m_chainman.LookupBlock(inv.hash)) {
                MakeAndPushMessage(pfrom, NetMsgType::BLOCK, block->Serialized(inv.type == MSG_WITNESS_BLOCK));
            } else {
                vNotFound.push_back(inv);
            }
        }
        // else: unknown type, dropped
    }

    peer.m_getdata_requests.erase(peer.m_getdata_requests.begin(), it);

    if (!vNotFound.empty()) MakeAndPushMessage(pfrom, NetMsgType::NOTFOUND, SerInvVector(vNotFound));
}

// Handles at most one message per call and fires net:inbound_message just
// before handling it; the return value says whether this peer has more work.
TWIN_PROBED bool PeerManagerImpl::ProcessMessages(CNode* pfrom, std::atomic<bool>& interruptMsgProc)
{
    PeerRef peer = GetPeerRef(pfrom->GetId());
    if (peer == nullptr) return false;

    // For outbound connections, our version must go out first.
    if (!pfrom->IsInboundConn() && !peer->m_outbound_version_message_sent) return false;

    if (!peer->m_getdata_requests.empty()) ProcessGetData(*pfrom, *peer, interruptMsgProc);

    if (pfrom->fDisconnect) return false;

    // this maintains the order of responses and bounds m_getdata_requests
    if (!peer->m_getdata_requests.empty()) return true;

    // Don't bother if send buffer is too full to respond anyway
    if (pfrom->fPauseSend) return false;

    const bool was_paused = pfrom->fPauseRecv;
    auto poll_result{pfrom->PollMessage()};
    if (!poll_result) return false;
    if (was_paused && !pfrom->fPauseRecv) m_connman.WakeSocketHandler(); // b-net may read this peer again

    CNetMessage& msg{poll_result->first};
    bool fMoreWork = poll_result->second;

    TRACEPOINT(net, inbound_message,
        pfrom->GetId(),
        pfrom->m_addr_name.c_str(),
        pfrom->ConnectionTypeAsString().c_str(),
        msg.m_type.c_str(),
        msg.m_recv.size(),
        msg.m_recv.data()
    );

    try {
        ProcessMessage(*pfrom, msg.m_type, msg.m_recv, msg.m_time, interruptMsgProc);
        if (interruptMsgProc) return false;
        if (!peer->m_getdata_requests.empty()) fMoreWork = true;
    } catch (const std::exception& e) {
        LogDebug("ProcessMessages(%s, %u bytes): Exception '%s' caught\n",
                 SanitizeString(msg.m_type).c_str(), msg.m_message_size, e.what());
    } catch (...) {
        LogDebug("ProcessMessages(%s, %u bytes): Unknown exception caught\n",
                 SanitizeString(msg.m_type).c_str(), msg.m_message_size);
    }
    return fMoreWork;
}

TWIN_PROBED void PeerManagerImpl::ProcessMessage(CNode& pfrom, const std::string& msg_type, DataStream& vRecv,
                                                 const std::chrono::microseconds /*time_received*/,
                                                 const std::atomic<bool>& interruptMsgProc)
{
    LogDebug("received: %s (%zu bytes) peer=%lld\n", SanitizeString(msg_type).c_str(), vRecv.size(), (long long)pfrom.GetId());

    PeerRef peer = GetPeerRef(pfrom.GetId());
    if (peer == nullptr) return;

    if (msg_type == NetMsgType::VERSION) {
        if (pfrom.nVersion != 0) {
            LogDebug("redundant version message from peer=%lld\n", (long long)pfrom.GetId());
            return;
        }
        const int nVersion = int32_t(vRecv.ReadLE32());
        vRecv.ignore(8);  // nServices
        vRecv.ignore(8);  // nTime
        vRecv.ignore(8);  // addrMe service bits
        vRecv.ignore(18); // addrMe
        if (nVersion < MIN_PEER_PROTO_VERSION) {
            LogDebug("peer using obsolete version %i, disconnecting peer=%lld\n", nVersion, (long long)pfrom.GetId());
            pfrom.fDisconnect = true;
            return;
        }
        uint64_t nNonce = 1;
        std::string cleanSubVer;
        int starting_height = -1;
        bool fRelay = true;
        if (!vRecv.empty()) {
            vRecv.ignore(26); // addrFrom
            nNonce = vRecv.ReadLE64();
        }
        if (!vRecv.empty()) cleanSubVer = SanitizeString(vRecv.ReadString(MAX_SUBVERSION_LENGTH));
        if (!vRecv.empty()) starting_height = int32_t(vRecv.ReadLE32());
        if (!vRecv.empty()) fRelay = vRecv.ReadBool();

        // Disconnect if we connected to ourself
        if (pfrom.IsInboundConn() && !m_connman.CheckIncomingNonce(nNonce)) {
            LogDebug("connected to self at %s, disconnecting\n", pfrom.m_addr_name.c_str());
            pfrom.fDisconnect = true;
            return;
        }

        // Inbound peers send us their version message when they connect.
        // We send our version message in response.
        if (pfrom.IsInboundConn()) PushNodeVersion(pfrom, *peer);

        const int greatest_common_version = std::min(nVersion, PROTOCOL_VERSION);
        pfrom.SetCommonVersion(greatest_common_version);
        pfrom.nVersion = nVersion;

        if (greatest_common_version >= WTXID_RELAY_VERSION) MakeAndPushMessage(pfrom, NetMsgType::WTXIDRELAY);
        // Signal ADDRv2 support (BIP155), before VERACK.
        MakeAndPushMessage(pfrom, NetMsgType::SENDADDRV2);
        MakeAndPushMessage(pfrom, NetMsgType::VERACK);

        peer->m_starting_height = starting_height;
        peer->m_user_agent = cleanSubVer;
        peer->m_relay_txs = fRelay;
        LogDebug("receive version message: %s: version %d, blocks=%d, peer=%lld\n",
                 cleanSubVer.c_str(), nVersion, starting_height, (long long)pfrom.GetId());

        // Outbound full-relay peers are asked for addresses right away.
        if (!pfrom.IsInboundConn()) MakeAndPushMessage(pfrom, NetMsgType::GETADDR);
        return;
    }

    if (pfrom.nVersion == 0) {
        // Must have a version message before anything else
        LogDebug("non-version message before version handshake. Message \"%s\" from peer=%lld\n",
                 SanitizeString(msg_type).c_str(), (long long)pfrom.GetId());
        return;
    }

    if (msg_type == NetMsgType::VERACK) {
        if (pfrom.fSuccessfullyConnected) {
            LogDebug("ignoring redundant verack message from peer=%lld\n", (long long)pfrom.GetId());
            return;
        }
        LogDebug("New %s v1 peer connected: version: %d, blocks=%d, peer=%lld\n",
                 pfrom.ConnectionTypeAsString().c_str(), pfrom.nVersion.load(), peer->m_starting_height,
                 (long long)pfrom.GetId());
        if (pfrom.GetCommonVersion() >= SHORT_IDS_BLOCKS_VERSION) {
            // Willing to provide version-2 cmpctblocks; not asking for high-bandwidth mode.
            Bytes p;
            SerU8(p, 0);
            SerLE64(p, CMPCTBLOCKS_VERSION);
            MakeAndPushMessage(pfrom, NetMsgType::SENDCMPCT, std::move(p));
        }
        pfrom.fSuccessfullyConnected = true;
        peer->m_successfully_connected = true;
        return;
    }

    if (msg_type == NetMsgType::SENDHEADERS) {
        peer->m_prefers_headers = true;
        return;
    }

    if (msg_type == NetMsgType::SENDCMPCT) {
        vRecv.ReadBool();
        vRecv.ReadLE64();
        return;
    }

    // BIP339: negotiated between VERSION and VERACK only.
    if (msg_type == NetMsgType::WTXIDRELAY) {
        if (pfrom.fSuccessfullyConnected) {
            LogDebug("wtxidrelay received after verack, disconnecting peer=%lld\n", (long long)pfrom.GetId());
            pfrom.fDisconnect = true;
            return;
        }
        if (pfrom.GetCommonVersion() >= WTXID_RELAY_VERSION) peer->m_wtxid_relay = true;
        return;
    }

    // BIP155: likewise.
    if (msg_type == NetMsgType::SENDADDRV2) {
        if (pfrom.fSuccessfullyConnected) {
            LogDebug("sendaddrv2 received after verack, disconnecting peer=%lld\n", (long long)pfrom.GetId());
            pfrom.fDisconnect = true;
            return;
        }
        peer->m_wants_addrv2 = true;
        return;
    }

    if (msg_type == NetMsgType::SENDTXRCNCL) return; // Erlay is off, as by default in bitcoind

    if (!pfrom.fSuccessfullyConnected) {
        LogDebug("Unsupported message \"%s\" prior to verack from peer=%lld\n",
                 SanitizeString(msg_type).c_str(), (long long)pfrom.GetId());
        return;
    }

    if (msg_type == NetMsgType::ADDR || msg_type == NetMsgType::ADDRV2) {
        // The whole vector is deserialized first, then its size judged.
        const bool v2 = msg_type == NetMsgType::ADDRV2;
        const uint64_t n = vRecv.ReadCompactSize();
        for (uint64_t i = 0; i < n; ++i) {
            vRecv.ignore(4); // nTime
            if (v2) {
                vRecv.ReadCompactSize(false); // services
                IgnoreAddrV2(vRecv);
            } else {
                vRecv.ignore(8 + 16); // services, IPv6-mapped address
            }
            vRecv.ignore(2); // port
        }
        if (n > MAX_ADDR_TO_SEND) {
            Misbehaving(*peer, std::string(msg_type) + " message size = " + std::to_string(n));
            return;
        }
        return; // the twin keeps no address manager
    }

    if (msg_type == NetMsgType::INV) {
        const std::vector<CInv> vInv = ReadInvVector(vRecv);
        if (vInv.size() > MAX_INV_SZ) {
            Misbehaving(*peer, "inv message size = " + std::to_string(vInv.size()));
            return;
        }
        for (const CInv& inv : vInv) {
            if (interruptMsgProc) return;
            // Ignore INVs that don't match the wtxidrelay setting, as bitcoind does.
            if (peer->m_wtxid_relay ? inv.IsMsgTx() : inv.IsMsgWtx()) continue;

            if (inv.IsMsgBlk()) {
                peer->AddKnown(inv.hash);
                if (!m_chainman.HaveBlock(inv.hash)) peer->m_getdata_to_send.push_back(CInv{MSG_WITNESS_BLOCK, inv.hash});
            } else if (inv.IsMsgTx() || inv.IsMsgWtx()) {
                peer->AddKnown(inv.hash);
                if (!m_mempool.exists(inv.hash, /*by_wtxid=*/inv.IsMsgWtx())) peer->m_getdata_to_send.push_back(inv);
            } else {
                LogDebug("Unknown inv type %u received from peer=%lld\n", inv.type, (long long)pfrom.GetId());
            }
        }
        return;
    }

    if (msg_type == NetMsgType::GETDATA) {
        const std::vector<CInv> vInv = ReadInvVector(vRecv);
        if (vInv.size() > MAX_INV_SZ) {
            Misbehaving(*peer, "getdata message size = " + std::to_string(vInv.size()));
            return;
        }
        peer->m_getdata_requests.insert(peer->m_getdata_requests.end(), vInv.begin(), vInv.end());
        ProcessGetData(pfrom, *peer, interruptMsgProc);
        return;
    }

    if (msg_type == NetMsgType::GETBLOCKS) {
        const std::vector<uint256> locator = ReadLocator(vRecv);
        const uint256 hash_stop = vRecv.ReadHash();
        if (locator.size() > MAX_LOCATOR_SZ) {
            LogDebug("getblocks locator size %zu > %zu, disconnecting peer=%lld\n",
                     locator.size(), MAX_LOCATOR_SZ, (long long)pfrom.GetId());
            pfrom.fDisconnect = true;
            return;
        }
        // The blocks after the fork point are announced, hash_stop excluded.
        // An empty locator means "from the start" here (a getheaders with
        // one asks for hash_stop alone); the zero hash matches no block.
        const auto blocks = m_chainman.BlocksAfterLocator(locator.empty() ? std::vector<uint256>{uint256{}} : locator,
                                                          hash_stop);
        int nLimit = MAX_BLOCKS_TO_ANNOUNCE_GETBLOCKS;
        for (const auto& b : blocks) {
            if (b->hash == hash_stop || nLimit-- <= 0) break;
            peer->m_inv_to_send.push_back(CInv{MSG_BLOCK, b->hash});
        }
        return;
    }

    if (msg_type == NetMsgType::GETBLOCKTXN) {
        const uint256 blockhash = vRecv.ReadHash();
        const std::vector<uint16_t> indexes = ReadDifferentialIndexes(vRecv);
        const auto block = m_chainman.LookupBlock(blockhash);
        if (!block) {
            LogDebug("Peer %lld sent us a getblocktxn for a block we don't have\n", (long long)pfrom.GetId());
            return;
        }
        // SendBlockTransactions(): the transactions asked for, with witness.
        Bytes p;
        SerBytes(p, blockhash);
        SerCompactSize(p, indexes.size());
        for (const uint16_t index : indexes) {
            if (index >= block->vtx.size()) {
                Misbehaving(*peer, "getblocktxn with out-of-bounds tx indices");
                return;
            }
            SerBytes(p, block->vtx[index]->ser_with_witness);
        }
        MakeAndPushMessage(pfrom, NetMsgType::BLOCKTXN, std::move(p));
        return;
    }

    if (msg_type == NetMsgType::GETHEADERS) {
        const std::vector<uint256> locator = ReadLocator(vRecv);
        const uint256 hash_stop = vRecv.ReadHash();
        if (locator.size() > MAX_LOCATOR_SZ) {
            LogDebug("getheaders locator size %zu > %zu, disconnecting peer=%lld\n",
                     locator.size(), MAX_LOCATOR_SZ, (long long)pfrom.GetId());
            pfrom.fDisconnect = true;
            return;
        }
        const auto blocks = m_chainman.BlocksAfterLocator(locator, hash_stop);
        Bytes p;
        SerCompactSize(p, blocks.size());
        for (const auto& b : blocks) {
            SerBytes(p, b->header);
            SerCompactSize(p, 0); // headers carry an empty transaction count
        }
        MakeAndPushMessage(pfrom, NetMsgType::HEADERS, std::move(p));
        return;
    }

    if (msg_type == NetMsgType::TX) {
        const CTransactionRef ptx = DeserializeTransaction(vRecv);
        peer->AddKnown(ptx->txid);
        peer->AddKnown(ptx->wtxid);
        AcceptToMemoryPool(m_mempool, ptx);
        return;
    }

    if (msg_type == NetMsgType::CMPCTBLOCK) {
        // CBlockHeaderAndShortTxIDs (blockencodings.h).
        vRecv.ignore(80); // header
        vRecv.ignore(8);  // nonce
        const uint64_t n_short = vRecv.ReadCompactSize();
        for (uint64_t i = 0; i < n_short; ++i) vRecv.ignore(SHORTTXIDS_LENGTH);
        const uint64_t n_prefilled = vRecv.ReadCompactSize();
        for (uint64_t i = 0; i < n_prefilled; ++i) {
            if (vRecv.ReadCompactSize() > 0xffff) throw std::ios_base::failure("CompactSize exceeds limit of type");
            DeserializeTransaction(vRecv);
        }
        if (n_short + n_prefilled > 0xffff) throw std::ios_base::failure("indexes overflowed 16 bits");
        return; // the twin does not reconstruct compact blocks
    }

    if (msg_type == NetMsgType::BLOCKTXN) {
        // BlockTransactions (blockencodings.h).
        vRecv.ignore(32); // blockhash
        const uint64_t n = vRecv.ReadCompactSize();
        for (uint64_t i = 0; i < n; ++i) DeserializeTransaction(vRecv);
        return; // no compact block is ever in flight: bitcoind ignores these too
    }

    if (msg_type == NetMsgType::HEADERS) {
        // bitcoind reads the count alone first, so as not to deserialize 2000 full blocks.
        const uint64_t nCount = vRecv.ReadCompactSize();
        if (nCount > MAX_HEADERS_RESULTS) {
            Misbehaving(*peer, "headers message size = " + std::to_string(nCount));
            return;
        }
        for (uint64_t n = 0; n < nCount; ++n) {
            vRecv.ignore(80);        // the header
            vRecv.ReadCompactSize(); // tx count, assumed 0
        }
        return; // no headers sync in the twin
    }

    if (msg_type == NetMsgType::BLOCK) {
        const auto pblock = DeserializeBlock(vRecv);
        peer->AddKnown(pblock->hash);
        m_chainman.ProcessNewBlock(pblock);
        return;
    }

    if (msg_type == NetMsgType::PING) {
        if (pfrom.GetCommonVersion() > BIP0031_VERSION) {
            const uint64_t nonce = vRecv.ReadLE64();
            // Echo the message back with the nonce. This allows for two useful features:
            // the peer measures latency, and detects that we are alive.
            Bytes p;
            SerLE64(p, nonce);
            MakeAndPushMessage(pfrom, NetMsgType::PONG, std::move(p));
        }
        return;
    }

    if (msg_type == NetMsgType::PONG) {
        if (vRecv.size() >= 8) {
            const uint64_t nonce = vRecv.ReadLE64();
            if (peer->m_ping_nonce_sent != 0 && nonce == peer->m_ping_nonce_sent) {
                const auto ping_time = GetTimeMicros() - peer->m_ping_start;
                if (!peer->m_min_ping_time || ping_time < *peer->m_min_ping_time) peer->m_min_ping_time = ping_time;
                peer->m_ping_nonce_sent = 0;
            } else if (nonce == 0) {
                peer->m_ping_nonce_sent = 0; // a zero nonce cancels the ping
            }
        } else {
            peer->m_ping_nonce_sent = 0; // short payload
        }
        return;
    }

    if (msg_type == NetMsgType::FEEFILTER) {
        const CAmount newFeeFilter = CAmount(vRecv.ReadLE64());
        if (MoneyRange(newFeeFilter)) peer->m_fee_filter_received = newFeeFilter;
        return;
    }

    // BIP157 requests: read, then refused, since the twin (like bitcoind
    // without -peerblockfilters) does not offer NODE_COMPACT_FILTERS.
    if (msg_type == NetMsgType::GETCFILTERS || msg_type == NetMsgType::GETCFHEADERS ||
        msg_type == NetMsgType::GETCFCHECKPT) {
        const uint8_t filter_type = vRecv.ReadU8();
        if (msg_type != NetMsgType::GETCFCHECKPT) vRecv.ignore(4); // start_height
        vRecv.ignore(32);                                         // stop_hash
        LogDebug("peer requested unsupported block filter type: %d, disconnecting peer=%lld\n",
                 filter_type, (long long)pfrom.GetId());
        pfrom.fDisconnect = true;
        return;
    }

    if (msg_type == NetMsgType::NOTFOUND) {
        ReadInvVector(vRecv); // the twin tracks no downloads to cancel
        return;
    }

    if (msg_type == NetMsgType::GETADDR || msg_type == NetMsgType::MEMPOOL) return;

    if (msg_type == NetMsgType::TWINBURN) {
        TwinBurnCpu(vRecv.ReadLE32());
        return;
    }

    // Ignore unknown message types for extensibility
    LogDebug("Unknown message type \"%s\" from peer=%lld\n", SanitizeString(msg_type).c_str(), (long long)pfrom.GetId());
}

void PeerManagerImpl::MaybeSendPing(CNode& node_to, Peer& peer, std::chrono::microseconds now)
{
    // The first ping goes out right after the handshake (m_ping_start is 0),
    // then one every PING_INTERVAL once the previous one was answered.
    if (peer.m_ping_nonce_sent != 0 || now <= peer.m_ping_start + PING_INTERVAL) return;
    uint64_t nonce;
    do {
        nonce = GetRand64();
    } while (nonce == 0);
    peer.m_ping_start = now;
    if (node_to.GetCommonVersion() > BIP0031_VERSION) {
        peer.m_ping_nonce_sent = nonce;
        Bytes p;
        SerLE64(p, nonce);
        MakeAndPushMessage(node_to, NetMsgType::PING, std::move(p));
    } else {
        // Peer is too old to support ping command with nonce, pong will never arrive.
        MakeAndPushMessage(node_to, NetMsgType::PING);
    }
}

void PeerManagerImpl::MaybeSendFeefilter(CNode& pto, Peer& peer)
{
    if (peer.m_sent_feefilter || pto.GetCommonVersion() < FEEFILTER_VERSION) return;
    Bytes p;
    SerLE64(p, DEFAULT_MIN_RELAY_TX_FEE);
    MakeAndPushMessage(pto, NetMsgType::FEEFILTER, std::move(p));
    peer.m_sent_feefilter = true;
}

// Everything the twin initiates towards a peer: our version (outbound),
// pings, block and transaction announcements, getdata for what the peer
// announced, feefilter.
TWIN_PROBED bool PeerManagerImpl::SendMessages(CNode* pto)
{
    PeerRef peer = GetPeerRef(pto->GetId());
    if (!peer) return false;

    // Initiate version handshake for outbound connections
    if (!pto->IsInboundConn() && !peer->m_outbound_version_message_sent) {
        PushNodeVersion(*pto, *peer);
        peer->m_outbound_version_message_sent = true;
    }

    // Don't send anything until the version handshake is complete
    if (!pto->fSuccessfullyConnected || pto->fDisconnect) return true;

    const auto current_time = GetTimeMicros();

    MaybeSendPing(*pto, *peer, current_time);

    if (!peer->m_inv_to_send.empty()) {
        for (size_t i = 0; i < peer->m_inv_to_send.size(); i += MAX_INV_SZ) {
            const size_t n = std::min(MAX_INV_SZ, peer->m_inv_to_send.size() - i);
            MakeAndPushMessage(*pto, NetMsgType::INV, SerInvVector(std::span{peer->m_inv_to_send}.subspan(i, n)));
        }
        peer->m_inv_to_send.clear();
    }

    if (!peer->m_getdata_to_send.empty()) {
        for (size_t i = 0; i < peer->m_getdata_to_send.size(); i += MAX_GETDATA_SZ) {
            const size_t n = std::min(MAX_GETDATA_SZ, peer->m_getdata_to_send.size() - i);
            MakeAndPushMessage(*pto, NetMsgType::GETDATA, SerInvVector(std::span{peer->m_getdata_to_send}.subspan(i, n)));
        }
        peer->m_getdata_to_send.clear();
    }

    MaybeSendFeefilter(*pto, *peer);
    return true;
}

} // namespace

std::unique_ptr<PeerManager> PeerManager::make(CConnman& connman, ChainstateManager& chainman, CTxMemPool& pool)
{
    return std::make_unique<PeerManagerImpl>(connman, chainman, pool);
}

// ===========================================================================
// Built-in blocks
// ===========================================================================
//
// Two deterministic blocks exist from start-up so tests can fetch large
// payloads with getdata:
//   * "medium": a coinbase plus P2PKH spends, ~400 KB (or about -blocksize
//     bytes: the benchmarks serve ~1 MB blocks), the shape of an ordinary
//     mainnet block;
//   * "big": a coinbase whose OP_RETURN output pads the serialized block to
//     exactly MAX_PROTOCOL_MESSAGE_LENGTH (4,000,000) bytes, the largest
//     payload the v1 transport accepts.
// Both chain from the regtest genesis, carry correct merkle roots and satisfy
// regtest proof of work; they are parsed back with DeserializeBlock, so they
// are valid serializations by construction.

// splitmix64: deterministic filler bytes that look random.
struct DeterministicRng {
    uint64_t state;
    uint64_t Next()
    {
        uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        return z ^ (z >> 31);
    }
    void Fill(Bytes& out, size_t n)
    {
        for (size_t i = 0; i < n; ++i) out.push_back(Next() & 0xff);
    }
};

static const uint256 REGTEST_GENESIS_HASH =
    Uint256FromHex("0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206");

// Hashing the real regtest genesis header is the twin's SHA-256 self-test.
static bool CheckGenesisHash()
{
    Bytes h;
    SerLE32(h, 1);
    h.insert(h.end(), 32, 0);
    SerBytes(h, Uint256FromHex("4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b"));
    SerLE32(h, 1296688602);
    SerLE32(h, 0x207fffff);
    SerLE32(h, 2);
    return Hash(h) == REGTEST_GENESIS_HASH;
}

static void SerP2PKH(Bytes& tx, DeterministicRng& rng)
{
    SerCompactSize(tx, 25);
    tx.insert(tx.end(), {0x76, 0xa9, 0x14});
    rng.Fill(tx, 20);
    tx.insert(tx.end(), {0x88, 0xac});
}

static void SerP2WPKH(Bytes& tx, DeterministicRng& rng)
{
    SerCompactSize(tx, 22);
    tx.insert(tx.end(), {0x00, 0x14});
    rng.Fill(tx, 20);
}

// A legacy spend, consolidating 2-6 P2PKH inputs (72-byte DER signature +
// compressed key) into one P2PKH and one P2WPKH output.
static Bytes MakeSpendTx(DeterministicRng& rng)
{
    Bytes tx;
    SerLE32(tx, 2);
    const unsigned n_in = 2 + rng.Next() % 5;
    SerCompactSize(tx, n_in);
    for (unsigned i = 0; i < n_in; ++i) {
        rng.Fill(tx, 32);
        SerLE32(tx, rng.Next() % 4);
        Bytes script;
        script.push_back(72);
        script.insert(script.end(), {0x30, 0x45, 0x02, 0x21, 0x00});
        rng.Fill(script, 32);
        script.insert(script.end(), {0x02, 0x20});
        rng.Fill(script, 32);
        script.push_back(0x01); // SIGHASH_ALL
        script.push_back(33);
        script.push_back(0x02 | (rng.Next() & 1));
        rng.Fill(script, 32);
        SerCompactSize(tx, script.size());
        SerBytes(tx, script);
        SerLE32(tx, 0xfffffffd);
    }
    SerCompactSize(tx, 2);
    SerLE64(tx, 10000 + rng.Next() % (10 * COIN));
    SerP2PKH(tx, rng);
    SerLE64(tx, 10000 + rng.Next() % COIN);
    SerP2WPKH(tx, rng);
    SerLE32(tx, 0);
    return tx;
}

// Coinbase with a BIP34 height push; op_return_len > 0 adds an OP_RETURN
// output whose script is exactly that long (OP_RETURN OP_PUSHDATA4 <data>).
static Bytes MakeCoinbaseTx(int height, size_t op_return_len, DeterministicRng& rng)
{
    Bytes tx;
    SerLE32(tx, 2);
    SerCompactSize(tx, 1);
    tx.insert(tx.end(), 32, 0);
    SerLE32(tx, 0xffffffff);
    Bytes sig{0x01, uint8_t(height)};
    const std::string tag = "/peerlog-twin/";
    sig.push_back(tag.size());
    sig.insert(sig.end(), tag.begin(), tag.end());
    SerCompactSize(tx, sig.size());
    SerBytes(tx, sig);
    SerLE32(tx, 0xffffffff);
    SerCompactSize(tx, op_return_len > 0 ? 2 : 1);
    SerLE64(tx, 50 * COIN);
    SerP2WPKH(tx, rng);
    if (op_return_len > 0) {
        SerLE64(tx, 0);
        SerCompactSize(tx, op_return_len);
        tx.push_back(0x6a); // OP_RETURN
        tx.push_back(0x4e); // OP_PUSHDATA4
        SerLE32(tx, op_return_len - 6);
        rng.Fill(tx, op_return_len - 6);
    }
    SerLE32(tx, 0);
    return tx;
}

static uint256 ComputeMerkleRoot(std::vector<uint256> hashes)
{
    while (hashes.size() > 1) {
        if (hashes.size() & 1) hashes.push_back(hashes.back());
        for (size_t i = 0; i < hashes.size() / 2; ++i) hashes[i] = Hash(hashes[2 * i], hashes[2 * i + 1]);
        hashes.resize(hashes.size() / 2);
    }
    return hashes.empty() ? uint256{} : hashes[0];
}

// hash <= regtest target (0x207fffff: 7fffff00...00).
static bool MeetsRegtestTarget(const uint256& hash)
{
    uint256 target{};
    target[31] = 0x7f;
    target[30] = 0xff;
    target[29] = 0xff;
    for (int i = 31; i >= 0; --i) {
        if (hash[i] != target[i]) return hash[i] < target[i];
    }
    return true;
}

static std::shared_ptr<const CBlock> AssembleBlock(const uint256& prev, uint32_t time, const std::vector<Bytes>& txs)
{
    std::vector<uint256> txids;
    for (const Bytes& tx : txs) txids.push_back(Hash(tx));
    Bytes ser;
    SerLE32(ser, 0x20000000);
    SerBytes(ser, prev);
    SerBytes(ser, ComputeMerkleRoot(txids));
    SerLE32(ser, time);
    SerLE32(ser, 0x207fffff);
    SerLE32(ser, 0);
    for (uint32_t nonce = 0; !MeetsRegtestTarget(Hash(std::span{ser}.first(80))); ++nonce) {
        WriteLE32(&ser[76], nonce);
    }
    SerCompactSize(ser, txs.size());
    for (const Bytes& tx : txs) SerBytes(ser, tx);

    const size_t size = ser.size();
    DataStream s(std::move(ser));
    auto block = DeserializeBlock(s);
    if (!s.empty() || block->ser_with_witness.size() != size || block->vtx.size() != txs.size()) {
        std::fprintf(stderr, "twin: internal error: built-in block does not round-trip\n");
        std::exit(1);
    }
    return block;
}

static constexpr size_t DEFAULT_MEDIUM_BLOCK_SIZE = 400 * 1000;

// Spends are added until the next one would make the block exceed `target` bytes.
static std::shared_ptr<const CBlock> MakeMediumBlock(size_t target)
{
    DeterministicRng rng{0x7065'6572'6c6f'6731ULL};
    std::vector<Bytes> txs{MakeCoinbaseTx(1, 0, rng)};
    size_t size = 80 + 3 + txs[0].size();
    for (;;) {
        Bytes tx = MakeSpendTx(rng);
        if (size + tx.size() > target) break;
        size += tx.size();
        txs.push_back(std::move(tx));
    }
    return AssembleBlock(REGTEST_GENESIS_HASH, 1700000000, txs);
}

static std::shared_ptr<const CBlock> MakeBigBlock(const uint256& prev)
{
    DeterministicRng rng{0x7065'6572'6c6f'6732ULL};
    constexpr size_t TARGET = MAX_PROTOCOL_MESSAGE_LENGTH;
    // Size of everything but the padding script and its length prefix, found
    // from a coinbase with a 1-byte-prefixed script of 6 bytes (pushdata header only).
    const size_t fixed = 80 + CompactSizeLen(1) + MakeCoinbaseTx(2, 6, rng).size() - CompactSizeLen(6) - 6;
    size_t script_len = TARGET - fixed;
    script_len -= CompactSizeLen(script_len);
    if (fixed + CompactSizeLen(script_len) + script_len != TARGET) {
        std::fprintf(stderr, "twin: internal error: cannot pad big block\n");
        std::exit(1);
    }
    rng = DeterministicRng{0x7065'6572'6c6f'6732ULL};
    auto block = AssembleBlock(prev, 1700000600, {MakeCoinbaseTx(2, script_len, rng)});
    if (block->ser_with_witness.size() != TARGET) {
        std::fprintf(stderr, "twin: internal error: big block is %zu bytes\n", block->ser_with_witness.size());
        std::exit(1);
    }
    return block;
}

// ===========================================================================
// main: argument parsing, start-up, shutdown (src/bitcoind.cpp, src/init.cpp)
// ===========================================================================

static void Usage(FILE* f)
{
    std::fprintf(f,
        "Usage: twin [options]\n"
        "  -port=<n>             listen on 127.0.0.1:<n> (default %u; 0 picks a free port)\n"
        "  -connect=<ip:port>    open an outbound-full-relay connection (repeatable)\n"
        "  -printport            print 'listening on 127.0.0.1:PORT' once ready\n"
        "  -maxinbound=<n>       evict the oldest inbound peer beyond <n> (default %d)\n"
        "  -twinrbf              conflicting transactions with a higher fee replace (mempool:replaced)\n"
        "  -blocksize=<n>        size in bytes of the medium built-in block, at most (default %zu)\n"
        "  -debug                log to stderr\n"
        "  -datadir=<dir>        write <dir>/bitcoind.pid once listening; removed on shutdown\n",
        REGTEST_DEFAULT_PORT, DEFAULT_MAX_INBOUND, DEFAULT_MEDIUM_BLOCK_SIZE);
}

static bool ParseBoolArg(const std::string& value) { return value.empty() || value == "1" || value == "true"; }

static bool ParseIntArg(const std::string& value, long min, long max, long& out)
{
    char* end = nullptr;
    errno = 0;
    const long v = std::strtol(value.c_str(), &end, 10);
    if (value.empty() || *end != 0 || errno != 0 || v < min || v > max) return false;
    out = v;
    return true;
}

static bool ParseConnectTarget(const std::string& value, ConnectTarget& target)
{
    std::string host = value;
    long port = REGTEST_DEFAULT_PORT;
    const auto colon = value.rfind(':');
    if (colon != std::string::npos) {
        host = value.substr(0, colon);
        if (!ParseIntArg(value.substr(colon + 1), 1, 65535, port)) return false;
    }
    if (host == "localhost") host = "127.0.0.1";
    target = ConnectTarget{};
    target.name = value;
    target.addr.sin_family = AF_INET;
    target.addr.sin_port = htons(uint16_t(port));
    return inet_pton(AF_INET, host.c_str(), &target.addr.sin_addr) == 1;
}

int main(int argc, char** argv)
{
    CConnman::Options opts;
    bool print_port = false;
    std::string datadir;
    bool full_rbf = false;
    size_t medium_block_size = DEFAULT_MEDIUM_BLOCK_SIZE;
    for (int i = 1; i < argc; ++i) {
        std::string arg = argv[i];
        if (arg.rfind("--", 0) == 0) arg.erase(0, 1);
        if (arg.empty() || arg[0] != '-') {
            std::fprintf(stderr, "Error: unexpected argument '%s'\n", argv[i]);
            return 1;
        }
        arg.erase(0, 1);
        const auto eq = arg.find('=');
        const std::string name = arg.substr(0, eq);
        const std::string value = eq == std::string::npos ? "" : arg.substr(eq + 1);
        long n;
        if (name == "port") {
            if (!ParseIntArg(value, 0, 65535, n)) {
                std::fprintf(stderr, "Error: invalid -port '%s'\n", value.c_str());
                return 1;
            }
            opts.port = uint16_t(n);
        } else if (name == "connect") {
            ConnectTarget target;
            if (!ParseConnectTarget(value, target)) {
                std::fprintf(stderr, "Error: invalid -connect '%s' (expected IPv4:PORT)\n", value.c_str());
                return 1;
            }
            opts.connect.push_back(target);
        } else if (name == "maxinbound") {
            if (!ParseIntArg(value, 0, 1 << 20, n)) {
                std::fprintf(stderr, "Error: invalid -maxinbound '%s'\n", value.c_str());
                return 1;
            }
            opts.max_inbound = int(n);
        } else if (name == "printport") {
            print_port = ParseBoolArg(value);
        } else if (name == "blocksize") {
            if (!ParseIntArg(value, 1000, MAX_PROTOCOL_MESSAGE_LENGTH, n)) {
                std::fprintf(stderr, "Error: invalid -blocksize '%s' (1000 to %u bytes)\n", value.c_str(), MAX_PROTOCOL_MESSAGE_LENGTH);
                return 1;
            }
            medium_block_size = size_t(n);
        } else if (name == "twinrbf") {
            full_rbf = ParseBoolArg(value);
        } else if (name == "debug") {
            g_debug = ParseBoolArg(value);
        } else if (name == "datadir") {
            if (value.empty()) {
                std::fprintf(stderr, "Error: -datadir needs a directory\n");
                return 1;
            }
            datadir = value;
        } else if (name == "regtest") {
            // always regtest
        } else if (name == "h" || name == "help" || name == "?") {
            Usage(stdout);
            return 0;
        } else {
            std::fprintf(stderr, "Error: Invalid parameter -%s\n", name.c_str());
            Usage(stderr);
            return 1;
        }
    }

    if (!CheckGenesisHash()) {
        std::fprintf(stderr, "twin: SHA-256 self-test failed\n");
        return 1;
    }

    // SIGINT/SIGTERM are blocked in every thread and collected by main with
    // sigwait(), so shutdown runs in ordinary code, not in a signal handler.
    sigset_t shutdown_signals;
    sigemptyset(&shutdown_signals);
    sigaddset(&shutdown_signals, SIGINT);
    sigaddset(&shutdown_signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &shutdown_signals, nullptr);
    std::signal(SIGPIPE, SIG_IGN);

    CTxMemPool mempool(full_rbf);
    ChainstateManager chainman(mempool);
    const auto medium = MakeMediumBlock(medium_block_size);
    const auto big = MakeBigBlock(medium->hash);
    chainman.AddStoredBlock(medium);
    chainman.AddStoredBlock(big);

    CConnman connman(opts);
    auto peerman = PeerManager::make(connman, chainman, mempool);
    mempool.m_signals = peerman.get();
    chainman.m_signals = peerman.get();

    std::string error;
    if (!connman.Start(*peerman, error)) {
        std::fprintf(stderr, "Error: %s\n", error.c_str());
        return 1;
    }

    // Like bitcoind's CreatePidFile: DATADIR/bitcoind.pid, removed again on
    // a clean shutdown (a killed node leaves it behind, stale).
    const std::string pid_file = datadir.empty() ? "" : datadir + "/bitcoind.pid";
    if (!pid_file.empty()) {
        FILE* f = std::fopen(pid_file.c_str(), "w");
        if (!f) {
            std::fprintf(stderr, "Error: cannot write %s: %s\n", pid_file.c_str(), std::strerror(errno));
            return 1;
        }
        std::fprintf(f, "%d\n", int(getpid()));
        std::fclose(f);
    }

    if (print_port) std::printf("listening on 127.0.0.1:%u\n", connman.GetListenPort());
    std::printf("block %s %zu\n", GetHex(big->hash).c_str(), big->ser_with_witness.size());
    std::printf("block %s %zu\n", GetHex(medium->hash).c_str(), medium->ser_with_witness.size());
    std::fflush(stdout);

    int sig = 0;
    while (sigwait(&shutdown_signals, &sig) != 0) {
    }
    LogDebug("signal %d received, shutting down\n", sig);

    connman.Interrupt();
    connman.Stop();
    mempool.m_signals = nullptr;
    chainman.m_signals = nullptr;
    if (!pid_file.empty()) std::remove(pid_file.c_str());
    return 0;
}
