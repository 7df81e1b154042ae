// Augmentation: PIL-equivalent operations against naive formulas written here
// and against outputs of PIL itself (embedded below), the seed's parameter
// distributions, and the exactness properties (flip mirrors, crops in bounds,
// factor 1 and angle 0 are identities). The loader's determinism is tested in
// tests/test_data.cpp.
#include <algorithm>
#include <cmath>
#include <set>
#include <string>

#include "data/augment.h"
#include "tests/test_util.h"

namespace ttq::data {
namespace {

// The pattern image the PIL references were made from.
int pattern(int x, int y, int c) { return (x * 37 + y * 71 + c * 101 + x * y * 13) % 256; }
Image pattern_rgb() {
  Image img(9, 8, 3);
  for (int y = 0; y < 8; ++y)
    for (int x = 0; x < 9; ++x)
      for (int c = 0; c < 3; ++c) img.at(y, x, c) = static_cast<uint8_t>(pattern(x, y, c));
  return img;
}
Image pattern_gray() {
  Image img(9, 8, 1);
  for (int y = 0; y < 8; ++y)
    for (int x = 0; x < 9; ++x) img.at(y, x, 0) = static_cast<uint8_t>(pattern(x, y, 1));
  return img;
}

Image random_image(int w, int h, int c, uint64_t seed) {
  Generator g(seed);
  Image img(w, h, c);
  for (auto& v : img.pixels) v = static_cast<uint8_t>(g.below(256));
  return img;
}

// A smooth random image (what photos look like locally), for rotation checks.
Image smooth_image(int w, int h, int c, uint64_t seed) {
  Generator g(seed);
  double a[3], b[3], p[3];
  for (int k = 0; k < 3; ++k) {
    a[k] = 0.1 + 0.3 * g.uniform();
    b[k] = 0.1 + 0.3 * g.uniform();
    p[k] = 6.28 * g.uniform();
  }
  Image img(w, h, c);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      for (int k = 0; k < c; ++k)
        img.at(y, x, k) = static_cast<uint8_t>(127.5 + 120 * std::sin(a[k] * x + b[k] * y + p[k]));
  return img;
}

int max_diff(const Image& a, const Image& b) {
  EXPECT_EQ(a.pixels.size(), b.pixels.size());
  int m = 0;
  for (size_t i = 0; i < std::min(a.pixels.size(), b.pixels.size()); ++i)
    m = std::max(m, std::abs(int(a.pixels[i]) - int(b.pixels[i])));
  return m;
}

// ---- against PIL ----

// Outputs of Pillow 9.4.0 (Debian bookworm's python3-pil) on pattern_rgb() /
// pattern_gray(), as hex of Image.tobytes(). Regenerate with this script (then clang-format):
//
//   from PIL import Image, ImageEnhance, ImageFilter
//   W, H = 9, 8
//   def px(x, y, c): return (x * 37 + y * 71 + c * 101 + x * y * 13) % 256
//   rgb = Image.new("RGB", (W, H))
//   rgb.putdata([tuple(px(x, y, c) for c in range(3)) for y in range(H) for x in range(W)])
//   gray = Image.new("L", (W, H))
//   gray.putdata([px(x, y, 1) for y in range(H) for x in range(W)])
//   E = {"color": ImageEnhance.Color, "contrast": ImageEnhance.Contrast,
//        "brightness": ImageEnhance.Brightness, "sharpness": ImageEnhance.Sharpness}
//   cases = [("l", rgb.convert("L")), ("smooth", rgb.filter(ImageFilter.SMOOTH)),
//            ("smooth_gray", gray.filter(ImageFilter.SMOOTH))]
//   for name, f in [("color", 0.5), ("color", 1.37), ("contrast", 0.75), ("contrast", 1.25),
//                   ("brightness", 0.8), ("brightness", 1.21), ("sharpness", 0.43), ("sharpness", 1.6)]:
//       cases.append(("%s %g" % (name, f), E[name](rgb).enhance(f)))
//       cases.append(("%s %g gray" % (name, f), E[name](gray).enhance(f)))
//   for a in (17.5, -33.0, 90.0, 7.3):
//       cases.append(("rotate %g" % a, rgb.rotate(a, Image.BICUBIC)))
//       cases.append(("rotate %g gray" % a, gray.rotate(a, Image.BICUBIC)))
//   for name, im in cases:
//       print('    {"%s", "%s"},' % (name, im.tobytes().hex()))

struct PilCase {
  const char* name;
  const char* hex;
};
const PilCase kPilCases[] = {
    {"l",
     "52777fa4c9587d557a7cae4a7c6176a84476c36c5e80bf685a7cbb7473a25857863c88876eaa6d79b57884c083986881ca9a966"
     "67fc8496fc555ab88916e7790a690a690a690a690"},
    {"smooth",
     "0065ca258aef4aaf146fd43994f95eb91e83de43a80368cd288df247ac1165a36a845f758e7d805e888a68925a7389647e5983d"
     "73ca18ef358926d835b719b5f896476a0687a697f576d836e856086eb50d53a9f5c86b06d97727e6d83547e94658f6a89517b9a"
     "759f359aff1c81e6759f7a936e98628cb680aa719e658f6d83ad8ba190e449ae63c82d8e69935694be81bf86ac879e889f66a06"
     "7916892a893f85daa0f746c82ac7cba81658fa68ab467c2758c839a61a86f8542a70cf156bb71d63bf156bb71d63bf156bb71d6"
     "3bf156bb71d63bf156bb"},
    {"smooth_gray",
     "658aafd4f91e43688daca35f7d889289593cf36d7189a0696d85eb3a86976d7e8f51759a819f6e8caa6583a149c86994bf879f6"
     "792f80f82ba8fb4759a6fa756d656d656d656d656"},
    {"color 0.5",
     "295b8e4e80b364974989bc6eaee193883b6dad60922c5e915183b661944693c6787a2d5fac5f91386a9d5b8e408dc072742759a"
     "6598ba8db8d9c4f8135679a65984aa4d789984b7d316396619446a0d385a457894a7caf87ba6c883b6d2e60936b9e506c1f51b8"
     "6b9d5e90c34577aa8fc2749d50825082b59acd7fa85b8d5b8dc0a5d88ab366987db062984b7d588abdafe294ca7daf7bae60964"
     "97b5688bbade092792c5e4678abaadd8f2c5e9190c375b86b9d76a95b9e51835c8f41c073a58bbe70c073a58bbe70c073a58bbe"
     "70c073a58bbe70c073a5"},
    {"color 0.5 gray",
     "658aafd4f91e43688dacde104274a6d80a3cf33271b0ef2e6daceb3a86d21e6ab6024e9a81da338ce53e97f049c82e94fa60c62"
     "c92f80f82f568db4ec134a756d656d656d656d656"},
    {"color 1.37",
     "006cf60691ff36c0005be51180ff36dc0892ff2db7006ff90994ff33bd0065ef1bce0084ff2cb6007bff2db7005fe915c8007ef"
     "a26b07aff30f01ca60078ff37c10076ff2cec18a20074fe33bd0072fc28f824ae028dff59e30fdc08920071fb3dc700c00076ff"
     "38c216a1ff0088ff61eb17f11da70893ff6cf622fc28b2139eff77ff2dff33bd4fd905ec18a2109bff81ff37ff4ad44dd703ea1"
     "6a00e99ff7fff35cd00830089ff7cff32006ff962ec18ff38c248d200f21ea82eb800ff40ca5de713ff40ca5de713ff40ca5de7"
     "13ff40ca5de713ff40ca"},
    {"color 1.37 gray",
     "658aafd4f91e43688dacde104274a6d80a3cf33271b0ef2e6daceb3a86d21e6ab6024e9a81da338ce53e97f049c82e94fa60c62"
     "c92f80f82f568db4ec134a756d656d656d656d656"},
    {"contrast 0.75",
     "216db83d88d458a43074c04c90dc67ac3783c7539f236fbb3f8bd656a22e7cc753a12d79c7529e2c78c4529d2977c34f9d2874c"
     "24e9a8bd763bb46922a76c159a53188d460b8438f2773be56a22e85d15dc14c983a85d173be4aac37832570bc5ea93597226ed0"
     "5ba74994e03682cd79c450bb47933e8ad681cd58c44f9b4692de89d561cc58a36bb743b8438f4490dc91dc68dd69b56ab541b64"
     "28e438eda8fdb67a02c783782ce8dd964236fbb79c551d05ba766b23dbc4894529e2ad661ad76c14dd661ad76c14dd661ad76c1"
     "4dd661ad76c14dd661ad"},
    {"contrast 0.75 gray",
     "6d89a5c1dc3854708ba3c82e53799ec4294fd84776a6d54473a3d24d86bf3871aa235c9582c5488bcd5093d658b84491dd6ab64"
     "38fdc2d83d970c65cb2499f62c262c262c262c262"},
    {"contrast 1.25",
     "005ddb0d8bff3bb90069e72697ff54c60482f432b00060df108fff37b50076f432b40071f331af006fee30ae006eec2bad0069e"
     "b29a890ff4cdf1d9b006cea3cba008bff47da18960067e537b50086ff42e927a50886ff67e523c604820063e144c200a3005fff"
     "40be219fff0180fe71ef2de01e9c0f8dff7efd3bee2caa1d9bff8cff49fb3ab85ad817da18961997ff99ff55ff56d558d614d71"
     "5941795ff96ff53b3006f0381ff92ff4f0060df72f02eff40be51d00ee11f9e31af00ff4ac86cea28ff4ac86cea28ff4ac86cea"
     "28ff4ac86cea28ff4ac8"},
    {"contrast 1.25 gray",
     "5c8ab8e7ff0331608eb5f300306fadec0029ff1c6bbaff1766b5ff2685e40362c1003f9e7fee1d8dfc2b9aff39d81797ff56d51"
     "594ff0080ff60ef3fcf1fae49e949e949e949e949"},
    {"brightness 0.8",
     "0050a11d6ebf3b8c1058a92d76c74b941868b135860253a42070c138890d60b135880c5db034850c5cad3484085cac30840858a"
     "c308071c246a42878095aab3c8c106ebf43a024750657a838890d6bbc40aa2e7f1a6bbc57a82c9418680454a54091157d0152ba"
     "3e8f2a7bcc1667b85dae32a428791f70c066b73bad31822878c96fc044b63a8b4fa024a024752576c777c84cc84c9d4d9e229f2"
     "3742474c575c64a880c5c1768b873c4480253a45eaf33ba3e8f499a1ea5297a348509c044955aab2fc044955aab2fc044955aab"
     "2fc044955aab2fc04495"},
    {"brightness 0.8 gray",
     "506e8ca9c71835537089b10c345c84ac0830c2285a8cbf245789bc2e6ba8185491013e7b67ae2870b73178c03aa02476c84c9e2"
     "374c60c68c453af3e9a298544ab44ab44ab44ab44"},
    {"brightness 1.21",
     "007af42ca6ff59d31886ff44b3ff71df249eff51cb037df830aaff55d01492ff51ce138dff4fca128cff4ec80d8bff49c70c86f"
     "f48c2abff6af83cb60e88ff5ad419a6ff65f337b10983fe55d014a2ff60ff46c027a2ff83fe42df249e0680fa62dc20bd027cff"
     "5ed840baff219cff8dff4cf93db72fa9ff9aff59ff4bc53cb6ffa8ff66ff58d277f236f337b138b3ffb4ff72ff74ee75ef34f03"
     "5af36b0ffb1ff70cd128c239dffaeff6c037df88eff4dff5ed86fe92dfa3eb94fca0eff68e288ff47ff68e288ff47ff68e288ff"
     "47ff68e288ff47ff68e2"},
    {"brightness 1.21 gray",
     "7aa6d3ffff24517daad0ff134f8cc8ff0c48ff3c88d4ff3783d0ff46a2fe2480dc025eba9cff3da9ff4bb6ff58f237b3ff74ef3"
     "5b0ff129dff7dff5ee93eca68ff68ff68ff68ff68"},
    {"sharpness 0.43",
     "0065ca258aef4aaf146fd43994f95eb91e83de43a80368cd288df247ac116dbc59943d75af63903c7fab579a3873aa538e377ad"
     "73ca18ef358ab538b3971b45699427ec15f9b4f87356da45d953e86eb50d53a9f4286c96db058974b833275ad5c9f48912f72bb"
     "64a7359aff1c81e675b860ac5498488ccf80c360b75497538bce8bc276e449ae63c82da74f934594d789d875cd76ae77af4cb04"
     "d914e92c993f85daa0f744a82c584d3703a7eb681c456d2649c72aa47b8558d42a70cf156bb71d63bf156bb71d63bf156bb71d6"
     "3bf156bb71d63bf156bb"},
    {"sharpness 0.43 gray",
     "658aafd4f91e43688dacbc3d637f9aaa373cf3537199c14f6d95eb3a86b04b759f2f649a81b8548cc3548bc249c84f94d876af4"
     "d92f80f82d37ec464aa55a756d656d656d656d656"},
    {"sharpness 1.6",
     "0065ca258aef4aaf146fd43994f95eb91e83de43a80368cd288df247ac1185ff2bc20075ff1ebe0068ff29b20073ff25bc0063d"
     "73ca18ef358f00ea30071f93fc70096ff48f80a9f006dff2fc30086eb50d53a9f0086ff6df513dc0083005ef245cd00a9005bff"
     "36bf359aff1c81e675fd1bf10f98038cff80ff32fc26af0ea3ff8bff31e449ae63c82dec0a931794ffa1ff47ff48dc49dd07de0"
     "8910992ff93f85daa0f740082ff9cff420050e46af228ff36ca44d802e610a542a70cf156bb71d63bf156bb71d63bf156bb71d6"
     "3bf156bb71d63bf156bb"},
    {"sharpness 1.6 gray",
     "658aafd4f91e43688dacff001e68b2ff003cf30e71c7ff0a6dc3eb3a86f5005ecd00369a81fd0f8cff26a3ff49c80a94ff48dd0"
     "892f80f82ff50f236d810a756d656d656d656d656"},
    {"rotate 17.5",
     "0000000000006df531a9f05aa7306eb893668a0f8dd73d920000001a7eff5c8933c26d723b71e42e923c34c36b1f8f4172da270"
     "0000049e73e9551748137956ee130c29b727c2b93990985b971d3486effa6c14a8a29c91cb76d9836640081b97d8e3c536ac89a"
     "e851e76d92db5c8c1c90e4a6a43a5d44e660ea5bd46973954fbf4672f15ad4894746ff4fd662be469353bdc4eca79bb2937c9c8"
     "344817a5fb34b6900000097854a784be63bee93127cb4a4c24fbc8187ca74936be035000000961e7619a9c7cfaa7b5dc055fc4c"
     "c368df33000000000000"},
    {"rotate 17.5 gray",
     "0000f5f030930f3d007e896d7192c38fda00e75137e19b2b09716ec129b736818e6ae86d5c90a444ea694f72d446d646bda7938"
     "37a4b00854bee7cc28174e0001ea9aac04cdf0000"},
    {"rotate -33",
     "000000a9ed62a7c332969f56a1403e6dcc35000000000000000000000000b93fae7f3adf314de49d378c7d63de62a47ed7009f0"
     "0000005c0a53ed37b55d06377a83265a61071d2733f952a9fb42f6a57b4956459c64489b62ebf683de02c42da66a1707d26c82a"
     "b46ca200881b7fde4dc8b64df1988ee2959bc1468485478705645c7d4d92ad23a3a176a0ae741376bfdc7ba784b042735ff37ba"
     "899c174d928e5c000000087da31949085d1907da47d59b329ad3ee2a3d75ba500000000000000000000000075d13f90a65cb643"
     "9b55b78ec6e265000000"},
    {"rotate -33 gray",
     "00edc39f40cc000000003f3a4d3763a40000c0d3d0a8a6d295b45764442e3d42a126b4007fc8f1e2c185057dada1ae767bb05fa"
     "874e500da90907d29e25b00000000d1a643b7e200"},
    {"rotate 90",
     "008dee692ac7ad6a2f73bc7dc182b783d08d619293a5725b0000006d52c78e5f8431925379327fa4799644a5da8b44a5a68f5c0"
     "00000fd00a7a08d324d9a6f6f30797e53888c5daa9b843dab9079000000ba8b703f8c716c89726aa37857a461d18e63be937cc4"
     "957a00000082ff387d9eaf70a97668855a316acba1da9386a38c4d9a7f0000004bd800bb544d7338994b9c41b243905693e031e"
     "29b7e9b840000002ca18669925f933c9d317ecb74c552b64798558edb7fcc850000000465ff26b384a3c821af58b93f90c577ac"
     "55833c8d7069a2000000"},
    {"rotate 90 gray",
     "8d2a6abc82d0927200525f923279a5448f00008d9a30535d8490008b8c89a3a48e939500ff9ea9856adaa39a00d854389c4393e"
     "29b00a1923c7ec5478ecc0065b3c85890ac3c6900"},
    {"rotate 7.3",
     "0364ff29a08f49da0080ff3fa0986fcf2f788b609a5036ca9650d724a4776dab64d218669f5bcf00879b50c40850aa57ac4332d"
     "8a15d82dc1cba49821e54c163cb0fa3d066aa23a52047b080aa4b30ebb3c98d854e53e948cf4ab021730073c760ab1e951c88e4"
     "889b8d4df87d38e335d882d059633767f473e850db4b92557efc41e996cba8880bc895b98048644cf072f77dfd73c07abd47b75"
     "b43743ceb55c74a877a146d2fbf5bd89f2298b537c164df75978ea45db37c5f9d7259ec009d6a8096a4aa8694a076b78c85a4a0"
     "70bc8e86ada177a6ab70"},
    {"rotate 7.3 gray",
     "64a0daff982f603650a4ab185b87c4aa43a1dc4954cbd02347aaeb8d53cf2173ab1c884d38d85967e84b7ee9a8c8804cf773bd5"
     "b3cc77a2fd898c175a47c720080aaa08ca08ea1ab"},
};

Image from_hex(const char* hex, int w, int h, int c) {
  Image img(w, h, c);
  std::string s(hex);
  EXPECT_EQ(s.size(), img.pixels.size() * 2) << "reference size";
  for (size_t i = 0; i < img.pixels.size() && 2 * i + 1 < s.size(); ++i)
    img.pixels[i] = static_cast<uint8_t>(std::stoi(s.substr(2 * i, 2), nullptr, 16));
  return img;
}

// Runs the operation a reference names on the pattern image.
Image run_case(const std::string& name, bool* gray) {
  *gray = name.size() > 5 && name.substr(name.size() - 5) == " gray";
  std::string op = *gray ? name.substr(0, name.size() - 5) : name;
  Image src = *gray ? pattern_gray() : pattern_rgb();
  if (op == "l") return convert_channels(src, 1);
  if (op == "smooth" || op == "smooth_gray") {
    *gray = op == "smooth_gray";
    return smooth_filter(*gray ? pattern_gray() : pattern_rgb());
  }
  size_t sp = op.find(' ');
  std::string kind = op.substr(0, sp);
  double v = std::stod(op.substr(sp + 1));
  if (kind == "color") return enhance_color(src, v);
  if (kind == "contrast") return enhance_contrast(src, v);
  if (kind == "brightness") return enhance_brightness(src, v);
  if (kind == "sharpness") return enhance_sharpness(src, v);
  if (kind == "rotate") return rotate_bicubic(src, v);
  ADD_FAILURE() << "unknown case " << name;
  return src;
}

TEST(AugmentPil, EveryOperationMatchesPilBitForBit) {
  int n = 0;
  for (const PilCase& c : kPilCases) {
    bool gray = false;
    Image got = run_case(c.name, &gray);
    int channels = (std::string(c.name) == "l" || gray) ? 1 : 3;
    Image want = from_hex(c.hex, 9, 8, channels);
    int mismatches = 0;
    for (size_t i = 0; i < want.pixels.size(); ++i) mismatches += got.pixels[i] != want.pixels[i];
    EXPECT_EQ(mismatches, 0) << c.name << ": max diff " << max_diff(got, want);
    ++n;
  }
  EXPECT_EQ(n, 27);
}

// ---- against naive formulas written here (double arithmetic: within 1 level) ----

double l_of(const Image& img, int y, int x) {
  return img.channels == 1 ? img.at(y, x, 0)
                           : img.at(y, x, 0) * 0.299 + img.at(y, x, 1) * 0.587 + img.at(y, x, 2) * 0.114;
}
int clip255(double v) { return v <= 0 ? 0 : v >= 255 ? 255 : int(v); }

TEST(AugmentNaive, ColorBlendsWithGray) {
  Image img = random_image(13, 11, 3, 1);
  for (double f : {0.4, 0.77, 1.0, 1.33, 1.6}) {
    Image got = enhance_color(img, f);
    int worst = 0;
    for (int y = 0; y < img.height; ++y)
      for (int x = 0; x < img.width; ++x) {
        double l = std::round(l_of(img, y, x));
        for (int c = 0; c < 3; ++c)
          worst = std::max(worst, std::abs(got.at(y, x, c) - clip255(l + f * (img.at(y, x, c) - l))));
      }
    EXPECT_LE(worst, 1) << "factor " << f;
  }
}

TEST(AugmentNaive, ContrastBlendsWithMeanGray) {
  Image img = random_image(13, 11, 3, 2);
  double mean = 0;
  for (int y = 0; y < img.height; ++y)
    for (int x = 0; x < img.width; ++x) mean += std::round(l_of(img, y, x)) / (img.width * img.height);
  double m = std::floor(mean + 0.5);
  for (double f : {0.7, 0.91, 1.0, 1.17, 1.3}) {
    Image got = enhance_contrast(img, f);
    int worst = 0;
    for (size_t i = 0; i < img.pixels.size(); ++i)
      worst = std::max(worst, std::abs(got.pixels[i] - clip255(m + f * (img.pixels[i] - m))));
    EXPECT_LE(worst, 1) << "factor " << f;
  }
}

TEST(AugmentNaive, BrightnessScales) {
  Image img = random_image(13, 11, 3, 3);
  for (double f : {0.7, 0.93, 1.0, 1.12, 1.3}) {
    Image got = enhance_brightness(img, f);
    int worst = 0;
    for (size_t i = 0; i < img.pixels.size(); ++i)
      worst = std::max(worst, std::abs(got.pixels[i] - clip255(f * img.pixels[i])));
    EXPECT_LE(worst, 1) << "factor " << f;
  }
}

TEST(AugmentNaive, SharpnessBlendsWithSmoothed) {
  Image img = random_image(13, 11, 3, 4);
  // Smoothed: [[1,1,1],[1,5,1],[1,1,1]] / 13 inside, the image on the border.
  Image sm = img;
  for (int y = 1; y < img.height - 1; ++y)
    for (int x = 1; x < img.width - 1; ++x)
      for (int c = 0; c < 3; ++c) {
        double s = 4 * img.at(y, x, c);
        for (int dy = -1; dy <= 1; ++dy)
          for (int dx = -1; dx <= 1; ++dx) s += img.at(y + dy, x + dx, c);
        sm.at(y, x, c) = static_cast<uint8_t>(std::floor(s / 13 + 0.5));
      }
  EXPECT_LE(max_diff(smooth_filter(img), sm), 1);
  for (double f : {0.4, 0.8, 1.0, 1.25, 1.6}) {
    Image got = enhance_sharpness(img, f);
    int worst = 0;
    for (size_t i = 0; i < img.pixels.size(); ++i)
      worst = std::max(worst,
                       std::abs(got.pixels[i] - clip255(sm.pixels[i] + f * (img.pixels[i] - sm.pixels[i]))));
    EXPECT_LE(worst, 1) << "factor " << f;
    // The border is the image whatever the factor.
    for (int x = 0; x < img.width; ++x) EXPECT_EQ(got.at(0, x, 1), img.at(0, x, 1));
  }
}

// Bicubic rotation, naively: inverse-map each output pixel centre, Keys cubic
// with a = -1 on clamped neighbours, black outside.
Image naive_rotate(const Image& img, double deg) {
  double t = deg * M_PI / 180, cx = img.width / 2.0, cy = img.height / 2.0;
  auto w = [](double d) {
    d = std::abs(d);
    const double a = -1;
    return d <= 1  ? (a + 2) * d * d * d - (a + 3) * d * d + 1
           : d < 2 ? a * (d * d * d - 5 * d * d + 8 * d - 4)
                   : 0;
  };
  Image out(img.width, img.height, img.channels);
  for (int y = 0; y < img.height; ++y)
    for (int x = 0; x < img.width; ++x) {
      double u = x + 0.5 - cx, v = y + 0.5 - cy;
      // Counter-clockwise on screen (y down): the source is the output turned clockwise.
      double xs = std::cos(t) * u - std::sin(t) * v + cx, ys = std::sin(t) * u + std::cos(t) * v + cy;
      if (xs < 0 || xs >= img.width || ys < 0 || ys >= img.height) continue;
      xs -= 0.5;
      ys -= 0.5;
      int x0 = int(std::floor(xs)), y0 = int(std::floor(ys));
      for (int c = 0; c < img.channels; ++c) {
        double s = 0;
        for (int j = -1; j <= 2; ++j)
          for (int i = -1; i <= 2; ++i) {
            int xx = std::clamp(x0 + i, 0, img.width - 1), yy = std::clamp(y0 + j, 0, img.height - 1);
            s += w(xs - (x0 + i)) * w(ys - (y0 + j)) * img.at(yy, xx, c);
          }
        out.at(y, x, c) = static_cast<uint8_t>(clip255(s));
      }
    }
  return out;
}

TEST(AugmentNaive, RotationMatchesInverseMappedBicubic) {
  Image img = smooth_image(64, 64, 3, 5);
  for (double deg : {-40.0, -12.25, 3.5, 29.0}) {
    Image got = rotate_bicubic(img, deg), want = naive_rotate(img, deg);
    // Truncation after different rounding can differ by one level; pixels whose
    // source lands exactly on the image edge may fall on either side.
    int off = 0, worst = 0;
    for (size_t i = 0; i < got.pixels.size(); ++i) {
      int d = std::abs(got.pixels[i] - want.pixels[i]);
      if (d > 1)
        ++off;
      else
        worst = std::max(worst, d);
    }
    EXPECT_LE(off, 6) << deg;
    EXPECT_LE(worst, 1) << deg;
  }
}

// ---- exact properties ----

TEST(AugmentExact, RotationByZeroIsIdentityAndBy90IsExact) {
  Image img = random_image(12, 12, 3, 6);
  EXPECT_EQ(rotate_bicubic(img, 0.0), img);
  EXPECT_EQ(rotate_bicubic(img, 360.0), img);
  Image r = rotate_bicubic(img, 90.0);  // counter-clockwise: out(y, x) = in(x, W-1-y)
  for (int y = 0; y < 12; ++y)
    for (int x = 0; x < 12; ++x)
      for (int c = 0; c < 3; ++c) ASSERT_EQ(r.at(y, x, c), img.at(x, 11 - y, c)) << y << "," << x;
}

TEST(AugmentExact, FlipIsAMirror) {
  Image img = random_image(7, 5, 3, 7);
  Image f = hflip(img);
  for (int y = 0; y < 5; ++y)
    for (int x = 0; x < 7; ++x)
      for (int c = 0; c < 3; ++c) EXPECT_EQ(f.at(y, x, c), img.at(y, 6 - x, c));
  EXPECT_EQ(hflip(f), img);
}

TEST(AugmentExact, FactorOneIsIdentity) {
  for (int c : {1, 3}) {
    Image img = random_image(11, 9, c, 8 + c);
    for (int e = 0; e < 4; ++e) EXPECT_EQ(enhance(img, Enhancer(e), 1.0), img) << "enhancer " << e;
    // The color of a gray image cannot change.
    EXPECT_EQ(enhance_color(img.channels == 1 ? img : convert_channels(convert_channels(img, 1), 3), 1.5),
              img.channels == 1 ? img : convert_channels(convert_channels(img, 1), 3));
  }
}

TEST(AugmentExact, CropsAndPadding) {
  Image img = random_image(10, 8, 3, 9);
  Image c = crop(img, 2, 3, 4, 5);
  for (int y = 0; y < 4; ++y)
    for (int x = 0; x < 5; ++x) EXPECT_EQ(c.at(y, x, 2), img.at(y + 2, x + 3, 2));
  EXPECT_THROW(crop(img, 5, 0, 4, 4), Error);
  EXPECT_THROW(crop(img, 0, 7, 4, 4), Error);
  Image cc = center_crop(random_image(64, 64, 3, 10), 56);
  EXPECT_EQ(cc, crop(random_image(64, 64, 3, 10), 4, 4, 56, 56));
  Image p = pad(img, 2);
  EXPECT_EQ(p.width, 14);
  EXPECT_EQ(p.at(0, 0, 0), 0);
  EXPECT_EQ(p.at(2, 2, 1), img.at(0, 0, 1));
  EXPECT_EQ(p.at(9, 11, 2), img.at(7, 9, 2));
}

// ---- the seed's random parameters ----

TEST(AugmentParams, DistributionsAndBounds) {
  const int n = 4000;
  std::set<std::array<int, 4>> orders;
  double sum_angle = 0, sum_color = 0, sum2_color = 0, sum_contrast = 0, sum2_contrast = 0;
  int flips = 0;
  std::vector<int> tops(9, 0);
  for (int i = 0; i < n; ++i) {
    SeedAugmentParams p = draw_seed_params(sample_key(42, 3, i), 64, 56);
    ASSERT_GE(p.angle, -40.0);
    ASSERT_LE(p.angle, 40.0);
    ASSERT_GE(p.top, 0);
    ASSERT_LE(p.top, 8);
    ASSERT_GE(p.left, 0);
    ASSERT_LE(p.left, 8);
    tops[p.top]++;
    for (int e : {0, 3}) ASSERT_TRUE(p.factors[e] >= 0.4 && p.factors[e] <= 1.6);
    for (int e : {1, 2}) ASSERT_TRUE(p.factors[e] >= 0.7 && p.factors[e] <= 1.3);
    std::array<int, 4> sorted = p.order;
    std::sort(sorted.begin(), sorted.end());
    ASSERT_EQ(sorted, (std::array<int, 4>{0, 1, 2, 3}));
    orders.insert(p.order);
    sum_angle += p.angle;
    flips += p.flip;
    sum_color += p.factors[0];
    sum2_color += p.factors[0] * p.factors[0];
    sum_contrast += p.factors[1];
    sum2_contrast += p.factors[1] * p.factors[1];
  }
  EXPECT_EQ(orders.size(), 24u);
  EXPECT_NEAR(sum_angle / n, 0.0, 1.0);
  EXPECT_NEAR(double(flips) / n, 0.5, 0.04);
  for (int t : tops) EXPECT_NEAR(double(t) / n, 1.0 / 9, 0.025);
  double mc = sum_color / n, sc = std::sqrt(sum2_color / n - mc * mc);
  EXPECT_NEAR(mc, 1.0, 0.02);
  EXPECT_NEAR(sc, 0.28, 0.03);  // N(1, 0.3) clipped at 2 sigma: about 0.28
  double mk = sum_contrast / n, sk = std::sqrt(sum2_contrast / n - mk * mk);
  EXPECT_NEAR(mk, 1.0, 0.01);
  EXPECT_NEAR(sk, 0.14, 0.015);
  // Keys separate samples, epochs and seeds.
  EXPECT_NE(sample_key(1, 0, 0), sample_key(1, 0, 1));
  EXPECT_NE(sample_key(1, 0, 0), sample_key(1, 1, 0));
  EXPECT_NE(sample_key(1, 0, 0), sample_key(2, 0, 0));
}

TEST(AugmentPipeline, SeedTransformComposesTheSteps) {
  Image img = smooth_image(64, 64, 3, 11);
  Preprocess p = Preprocess::seed_rgb();
  uint64_t key = sample_key(9, 1, 17);
  SeedAugmentParams prm = draw_seed_params(key, 64, 56);
  Image x = rotate_bicubic(img, prm.angle);
  x = crop(x, prm.top, prm.left, 56, 56);
  if (prm.flip) x = hflip(x);
  for (int e : prm.order) x = enhance(x, Enhancer(e), prm.factors[e]);
  std::vector<float> got(3 * 56 * 56, std::nanf(""));
  preprocess(img, p, true, key, got.data());
  const float mean[3] = {0.485f, 0.456f, 0.406f}, sd[3] = {0.229f, 0.224f, 0.225f};
  for (int c = 0; c < 3; ++c)
    for (int y = 0; y < 56; ++y)
      for (int xx = 0; xx < 56; ++xx) {
        float want = (x.at(y, xx, c) / 255.0f - mean[c]) / sd[c];
        ASSERT_EQ(got[(c * 56 + y) * 56 + xx], want) << c << "," << y << "," << xx;
      }
  // Validation: the centre crop, normalised.
  preprocess(img, p, false, key, got.data());
  EXPECT_FLOAT_EQ(got[0], (img.at(4, 4, 0) / 255.0f - mean[0]) / sd[0]);
  EXPECT_FLOAT_EQ(got[2 * 56 * 56 + 55 * 56 + 55], (img.at(59, 59, 2) / 255.0f - mean[2]) / sd[2]);
}

TEST(AugmentPipeline, GrayPadCropFlip) {
  Image img = random_image(28, 28, 1, 12);
  Preprocess p = Preprocess::gray();
  EXPECT_EQ(p.crop, 28);
  EXPECT_EQ(p.pad, 2);
  std::vector<float> out(28 * 28);
  std::set<std::pair<int, int>> origins;
  for (int i = 0; i < 200; ++i) {
    uint64_t key = sample_key(5, 0, i);
    CropFlipParams prm = draw_crop_flip_params(key, 32, 28);
    ASSERT_TRUE(prm.top >= 0 && prm.top <= 4 && prm.left >= 0 && prm.left <= 4);
    origins.insert({prm.top, prm.left});
    preprocess(img, p, true, key, out.data());
    for (int y = 0; y < 28; ++y)
      for (int x = 0; x < 28; ++x) {
        int sx = prm.flip ? 27 - x : x;
        int iy = y + prm.top - 2, ix = sx + prm.left - 2;
        int v = (iy >= 0 && iy < 28 && ix >= 0 && ix < 28) ? img.at(iy, ix, 0) : 0;
        ASSERT_EQ(out[y * 28 + x], (v / 255.0f - 0.2860f) / 0.3530f);
      }
  }
  EXPECT_EQ(origins.size(), 25u);
  // Validation: no augmentation.
  preprocess(img, p, false, 0, out.data());
  EXPECT_EQ(out[5 * 28 + 7], (img.at(5, 7, 0) / 255.0f - 0.2860f) / 0.3530f);
}

TEST(AugmentPipeline, ForInput) {
  Preprocess a = Preprocess::for_input(3, 56);
  EXPECT_EQ(a.image_size, 64);
  EXPECT_EQ(a.crop, 56);
  EXPECT_EQ(a.augment, TrainAugment::Seed);
  Preprocess b = Preprocess::for_input(1, 28);
  EXPECT_EQ(b.image_size, 28);
  EXPECT_EQ(b.channels, 1);
  EXPECT_EQ(b.augment, TrainAugment::PadCropFlip);
}

}  // namespace
}  // namespace ttq::data
